"""Seconds per prompt of the log-probability increase ("lpi") against exact integrated gradients, side by side.

Run under the timing lock, one thread: ``flock /tmp/kneuron-timing.lock .venv/bin/python benchmarks/bench_lpi.py``.
The embedded SmolLM2-135M (``kneuron.load()``), the first built-in capital fact's bag of prompts, each estimator's
``attribute`` on the whole bag (lpi builds each layer's vocabulary x neuron matrix once for the bag), repeated
``REPEATS`` times alternately; the best run is quoted (least slowed by other processes), the median beside it.
Also printed: how much the two agree (top-10 neurons per prompt, refined neurons of the bag).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import kneuron
from kneuron.attribution import IntegratedGradients, LogProbIncrease, refine
from kneuron.facts import builtin_facts

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 2


def main() -> None:
    torch.set_num_threads(1)
    lm = kneuron.load()
    fact = builtin_facts(["capital"])[0]
    prompts = fact.prompts()[:6]
    estimators = {"lpi": LogProbIncrease(), "ig": IntegratedGradients()}
    times: dict[str, list[float]] = {name: [] for name in estimators}
    bags = {}
    for _ in range(REPEATS):
        for name, estimator in estimators.items():
            start = time.perf_counter()
            bags[name] = estimator.attribute(lm, prompts, fact.object)
            times[name].append((time.perf_counter() - start) / len(prompts))
    print(f"{lm!r}, fact {fact.id} -> {fact.object!r}, {len(prompts)} prompts, torch threads "
          f"{torch.get_num_threads()}, {REPEATS} runs each")
    for name, seconds in times.items():
        print(f"  {name:>3}: {min(seconds):.2f} s per prompt (best), median {statistics.median(seconds):.2f}, "
              f"all {[round(s, 2) for s in seconds]}")
    print(f"  lpi / ig: {min(times['lpi']) / min(times['ig']):.2f}")
    for index, (a, b) in enumerate(zip(bags["lpi"], bags["ig"], strict=True)):
        top_a = set(a.scores.flatten().topk(10).indices.tolist())
        top_b = set(b.scores.flatten().topk(10).indices.tolist())
        print(f"  prompt {index}: top-10 overlap {len(top_a & top_b)}/10, P(answer) {b.probability:.3g}")
    print(f"  refined: lpi {[str(n) for n in refine(bags['lpi']).neurons]}, "
          f"ig {[str(n) for n in refine(bags['ig']).neurons]}")


if __name__ == "__main__":
    main()
