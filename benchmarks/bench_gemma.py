"""Exact integrated gradients on Gemma 3 270M: the fused output head against the model's own head, side by side.

Run with ``.venv/bin/python benchmarks/bench_gemma.py`` after ``make gemma``. One built-in fact (its six prompts,
20 steps, the paper's α = k/m, probability objective, the post-FFN norm frozen: kneuron's defaults), one thread.

* **old**: the route before the fused head, reproduced in this process by switching off its two changes: the rows
  read their objective through the model's own head and a log-softmax of the full (rows, 262,144) logits
  (``step_rows.fusable_head`` answers False), and the prefix cache runs the head over every prefix token (the
  previous ``prefix_cache``).
* **new**: kneuron as it is (:mod:`kneuron.models.fused_head`).

Per prompt the two run alternately (which goes first alternates too) and the float32 matrix-multiply rate is
measured just before (``bounds.matmul_rate``: a 2048 × 2048 product, best of 3). The bound is
``bounds.lower_bound_flops`` (the FLOPs exact IG cannot avoid: the clean pass, and per (layer, α) row
the rows' blocks above the layer and the head, forward and input-backward; for this 262k-token head the backward's
Wᵀ·softmax is a full head-sized product too, see the fused head's docstring) divided by that rate. A fact's seconds
are the sum over its prompts; the share of the bound is bound / measured. Scores: the largest |new − old| over a
prompt's scores divided by its largest |old| (float32 rounding: the two sum the vocabulary in different orders).

``--profile`` also prints, for one prompt and each route, where the time goes (torch.profiler, self CPU time by
operator group). The load average is printed before and after: on a shared machine the seconds are under load and
only the ratios carry over. The JSON goes to ``benchmarks/results/bench_gemma.json``; the last line is
``old_s_per_fact=.. new_s_per_fact=.. speedup=.. bound_s_per_fact=.. share_of_bound=.. max_rel_diff=..``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))
import kneuron  # noqa: E402
from bounds import lower_bound_flops, matmul_rate  # noqa: E402
from kneuron.attribution import step_rows  # noqa: E402
from kneuron.attribution.integrated_gradients import integrated_gradients  # noqa: E402
from kneuron.facts import encode  # noqa: E402
from kneuron.facts.builtin import builtin_facts  # noqa: E402
from kneuron.models import fused_head  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_gemma.json"
STEPS = 20


def _old_prefix_cache(lm, ids):
    """``prefix_cache`` as it was: the model's whole forward, its head over every prefix token included."""
    out = lm.model(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@contextmanager
def old_route() -> Iterator[None]:
    with mock.patch.object(step_rows, "fusable_head", lambda lm: False), \
            mock.patch.object(step_rows, "prefix_cache", _old_prefix_cache):
        yield


@contextmanager
def new_route() -> Iterator[None]:
    yield


ROUTES = {"old": old_route, "new": new_route}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def group(name: str, shapes: list, head_dims: set[int]) -> str:
    """An operator's group in the profile: the head's products, the log-softmax, other products, attention...
    (an operator is the head's when one of its inputs has a vocabulary-sized or a fused head's chunk-sized dim)"""
    vocab_sized = any(isinstance(s, list) and any(d in head_dims for d in s) for s in shapes)
    if name in ("aten::mm", "aten::addmm", "aten::bmm"):
        return "head products (vocabulary-sized)" if vocab_sized else "block products"
    if "log_softmax" in name or (vocab_sized and name in ("aten::fill_", "aten::zero_", "aten::scatter_add_")):
        return "log-softmax, its backward and its zero-filled gradient"
    if vocab_sized:
        return "the head's element-wise work (exp, max, sum over the vocabulary)"
    if "scaled_dot_product" in name or "softmax" in name:
        return "attention (sliding window and global)"
    if name in ("aten::_to_copy", "aten::to", "aten::copy_"):
        return "dtype conversions and copies"
    return "everything else (norms, activations, indexing, autograd)"


def profile(lm, query) -> dict[str, dict[str, float]]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out: dict[str, dict[str, float]] = {}
    head_dims = {lm.model.config.vocab_size, fused_head.CHUNK}
    for route, enter in ROUTES.items():
        with enter(), torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            integrated_gradients(lm, query, steps=STEPS)
        groups: dict[str, float] = defaultdict(float)
        for event in prof.key_averages(group_by_input_shape=True):
            groups[group(event.key, event.input_shapes, head_dims)] += event.self_cpu_time_total / 1e6
        out[route] = dict(sorted(groups.items(), key=lambda kv: -kv[1]))
        total = sum(groups.values())
        print(f"\n[profile, {route} route] one prompt, {total:.2f} s of self CPU time (profiler on)")
        for name, seconds in out[route].items():
            print(f"  {name:<58}{seconds:7.2f} s {100 * seconds / total:5.1f}%")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--fact", default="language:Brazil", help="a built-in fact's id")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also profile one prompt per route")
    parser.add_argument("--prompts", type=int, default=None, help="only the fact's first N prompts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    started = time.perf_counter()
    lm = kneuron.load(args.model)
    load_s = time.perf_counter() - started
    fact = next(f for f in builtin_facts() if f.id == args.fact)
    queries = [encode(lm, prompt, fact.object) for prompt in fact.prompts()[:args.prompts]]
    print(f"{lm!r}; torch threads {torch.get_num_threads()}; fact {fact.id} -> {fact.object!r}, "
          f"{len(queries)} prompts, {STEPS} steps (loaded in {load_s:.0f} s); load average {load_before}")
    for enter in ROUTES.values():  # warm-up
        with enter():
            integrated_gradients(lm, queries[0], steps=STEPS, layers=[lm.n_layers - 1])
    profiled = profile(lm, queries[0]) if args.profile else {}
    rows = []
    print(f"\n{'prompt':<58}{'tokens':>7}{'old s':>8}{'new s':>8}{'ratio':>7}{'bound s':>9}{'new/bound':>10}"
          f"{'rel diff':>10}")
    for index, query in enumerate(queries):
        rate = matmul_rate(torch.float32)
        flops = lower_bound_flops(lm, query, STEPS)
        seconds, scores = {}, {}
        for route in (("old", "new") if index % 2 == 0 else ("new", "old")):
            with ROUTES[route]():
                start = time.perf_counter()
                scores[route] = integrated_gradients(lm, query, steps=STEPS)
                seconds[route] = time.perf_counter() - start
        old, new = scores["old"].scores, scores["new"].scores
        rel = float((new - old).abs().max() / old.abs().max())
        row = dict(prompt=query.text, tokens=len(query), old_s=seconds["old"], new_s=seconds["new"],
                   gflop=flops / 1e9, rate_gflops=rate / 1e9, bound_s=flops / rate, max_rel_diff=rel,
                   probability_old=scores["old"].probability, probability_new=scores["new"].probability)
        rows.append(row)
        print(f"{query.text[:56]:<58}{len(query):>7}{row['old_s']:8.2f}{row['new_s']:8.2f}"
              f"{row['old_s'] / row['new_s']:7.2f}{row['bound_s']:9.2f}{row['bound_s'] / row['new_s']:10.0%}"
              f"{rel:10.1e}")
    old_s, new_s = sum(r["old_s"] for r in rows), sum(r["new_s"] for r in rows)
    bound_s = sum(r["bound_s"] for r in rows)
    summary = dict(old_s_per_fact=old_s, new_s_per_fact=new_s, speedup=old_s / new_s, bound_s_per_fact=bound_s,
                   share_of_bound=bound_s / new_s, old_share_of_bound=bound_s / old_s,
                   max_rel_diff=max(r["max_rel_diff"] for r in rows))
    load_after = load_average()
    print(f"\none fact: old {old_s:.1f} s, new {new_s:.1f} s ({old_s / new_s:.2f}x); float32 bound {bound_s:.1f} s "
          f"({sum(r['gflop'] for r in rows):.0f} GFLOP at {min(r['rate_gflops'] for r in rows):.0f}-"
          f"{max(r['rate_gflops'] for r in rows):.0f} GFLOP/s): new at {summary['share_of_bound']:.0%} of it, "
          f"old at {summary['old_share_of_bound']:.0%}; load average before {load_before}, after {load_after} "
          "(figures under that load)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(model=args.model, fact=fact.id, steps=STEPS, threads=args.threads,
                                        load_average_before=load_before, load_average_after=load_after,
                                        prompts=rows, profile=profiled, **summary), indent=2) + "\n")
    print(" ".join(f"{key}={value:.4g}" for key, value in summary.items() if key != "old_share_of_bound"))


if __name__ == "__main__":
    main()
