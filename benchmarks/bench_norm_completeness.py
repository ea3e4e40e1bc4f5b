"""Completeness of integrated gradients on Gemma 3 270M with its post-FFN norm frozen and live.

    .venv/bin/python benchmarks/bench_norm_completeness.py                    # 3 prompts, 20 and 100 steps
    .venv/bin/python benchmarks/bench_norm_completeness.py --steps 20,200 --prompts 2

Gemma 3 normalises each FFN output before the residual (see :mod:`kneuron.attribution.ffn_norm`). Integrated
gradients' completeness says that, as the steps grow, a layer's scores sum to that layer's own P(1) − P(0). For each
rule (``frozen``, the default, and ``live``, the literal definition) and each step count, over the prompts' layers
whose |P(1) − P(0)| is at least ``--min-delta`` times the prompt's P(1) (layers whose removal barely moves the answer
have a relative gap dominated by rounding), this prints:

* the median over (prompt, layer) of |gap| / |P(1) − P(0)|, where gap = Σ scores − (P(1) − P(0));
* the share of those layers within 5% of completeness;
* Σ |gap| / Σ |P(1) − P(0)| over all layers;
* seconds per prompt (not a comparison; torch threads: ``--threads``, 1 by default).

Needs Gemma 3 270M (``make gemma``). Last line: ``frozen_median_gap=.. live_median_gap=..`` at the largest step count.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import kneuron  # noqa: E402
from json_results import table, write_results  # noqa: E402  (benchmarks/, the script's folder)
from kneuron.attribution.integrated_gradients import integrated_gradients  # noqa: E402
from kneuron.facts import encode  # noqa: E402

#: prompts Gemma 3 270M answers (top-1, P between 0.3 and 0.95 on this machine)
PROMPTS = [
    ("The official language of Brazil is", "Portuguese"),
    ("Egypt is located on the continent of", "Africa"),
    ("The capital of Japan is", "Tokyo"),
    ("The chemical symbol for gold is", "Au"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--steps", default="20,100", help="comma-separated step counts")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-delta", type=float, default=0.01)
    parser.add_argument("--json", default=None, help="where to write the results (default: "
                                                      "benchmarks/results/bench_norm_completeness.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = kneuron.load(args.model)
    steps_list = [int(s) for s in args.steps.split(",")]
    print(f"{lm!r}; torch threads {torch.get_num_threads()}; prompts {args.prompts}; steps {steps_list}")
    queries = [encode(lm, prompt, answer) for prompt, answer in PROMPTS[:args.prompts]]
    last: dict[str, float] = {}
    rows: list[list] = []
    print(f"{'rule':<7}{'steps':>6}{'layers':>8}{'median |gap|/|dP|':>20}{'within 5%':>11}{'sum|gap|/sum|dP|':>18}"
          f"{'s/prompt':>10}")
    for steps in steps_list:
        for rule in ("frozen", "live"):
            gaps, deltas, kept = [], [], []
            started = time.perf_counter()
            for query in queries:
                scores = integrated_gradients(lm, query, steps=steps, norm=rule)
                delta = scores.probability - scores.baseline
                gap = scores.completeness_gap
                gaps.append(gap.abs())
                deltas.append(delta.abs())
                big = delta.abs() >= args.min_delta * scores.probability
                kept.append((gap.abs() / delta.abs())[big])
            seconds = (time.perf_counter() - started) / len(queries)
            relative = torch.cat(kept)
            median = float(relative.median())
            within = float((relative < 0.05).double().mean())
            total = float(torch.cat(gaps).sum() / torch.cat(deltas).sum())
            print(f"{rule:<7}{steps:>6}{len(relative):>8}{median:>20.4f}{within:>11.0%}{total:>18.4f}{seconds:>10.1f}")
            last[rule] = median
            rows.append([rule, steps, len(relative), median, within, total, seconds])
    summary = {"frozen_median_gap": round(last["frozen"], 4), "live_median_gap": round(last["live"], 4)}
    print(" ".join(f"{key}={value:.4f}" for key, value in summary.items()))
    command = ("python benchmarks/bench_norm_completeness.py " + " ".join(sys.argv[1:])).strip()
    columns = ["rule", "steps", "layers", "median |gap| / |P(1) − P(0)|", "share of layers within 5%",
               "Σ|gap| / Σ|P(1) − P(0)|", "s/prompt"]
    write_results("bench_norm_completeness", command=command, summary=summary, path=args.json,
                  tables=[table(f"Completeness gap per layer on {lm.name} ({args.prompts} prompts; layers whose "
                                f"|P(1) − P(0)| is at least {args.min_delta:.0%} of P(1))", columns, rows)])


if __name__ == "__main__":
    main()
