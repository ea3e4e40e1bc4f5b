"""Where one fact's time goes: exact IG against two-stage-ig on SmolLM2-135M, one thread, batch by batch.

    .venv/bin/python benchmarks/profile_two_stage.py capital:France

Every batch of step rows (:func:`kneuron.attribution.step_rows.run_rows`) is counted: its rows, its row-blocks (each
row runs the blocks from its own layer up, so a row at layer l is 30 − l of them), whether it takes gradients, the
prompts in it, its lowest layer and its seconds; the clean passes are timed too. Then cProfile's top functions.
The docs' benchmarks page fits a cost model on these lines (per batch, per block run, per row, per row-block).
The totals, a row per estimator, go to ``benchmarks/results/profile_two_stage.json`` (the page renders them).
"""

from __future__ import annotations

import cProfile
import importlib
import io
import pstats
import sys
import time

import torch

import kneuron
from json_results import command_line, summary_of, table, write_results
from kneuron.attribution.estimators import IntegratedGradients, TwoStageIntegratedGradients
from kneuron.facts import encode, load_facts

step_rows = importlib.import_module("kneuron.attribution.step_rows")
ig_module = importlib.import_module("kneuron.attribution.integrated_gradients")
two_stage = importlib.import_module("kneuron.attribution.two_stage")


def main() -> None:
    torch.set_num_threads(1)
    lm = kneuron.load()
    wanted = sys.argv[1] if len(sys.argv) > 1 else "capital:France"
    fact = next(f for f in load_facts("builtin") if f.id == wanted)
    queries = [encode(lm, prompt, fact.object) for prompt in fact.prompts()]
    log: list[tuple] = []
    clean: list[float] = []
    run_rows, make_plan, make_plans = step_rows.run_rows, ig_module.make_plan, step_rows.make_plans

    def counted(lm_, plans, chunk, objective, gradients=True, frozen_norm=False):
        start = time.perf_counter()
        out = run_rows(lm_, plans, chunk, objective, gradients=gradients, frozen_norm=frozen_norm)
        log.append((len(chunk), sum(lm.n_layers - r[1] for r in chunk), gradients, len({r[0] for r in chunk}),
                    min(r[1] for r in chunk), time.perf_counter() - start))
        return out

    def timed(function):
        def inner(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            clean.append(time.perf_counter() - start)
            return out
        return inner

    ig_module.run_rows = two_stage.run_rows = counted
    ig_module.make_plan, two_stage.make_plans = timed(make_plan), timed(make_plans)
    estimators = [("warm-up", IntegratedGradients(steps=2)), ("ig", IntegratedGradients()),
                  ("two-stage-ig", TwoStageIntegratedGradients())]
    table_rows, totals = [], {}
    for name, estimator in estimators:
        log.clear()
        clean.clear()
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        bag = estimator.attribute(lm, queries, fact.object)
        profile.disable()
        total = time.perf_counter() - start
        if name == "warm-up":
            continue
        print(f"== {name}: {total:.2f} s, {len(queries)} prompts; clean passes {sum(clean):.2f} s ({len(clean)} calls)")
        row: list = [name, round(total, 2), round(sum(clean), 2), len(clean)]
        totals[name] = total
        for grads, label in ((True, "gradient"), (False, "forward-only")):
            mine = [entry for entry in log if entry[2] == grads]
            print(f"  {label} batches {len(mine)}: rows {sum(e[0] for e in mine)}, row-blocks "
                  f"{sum(e[1] for e in mine)}, {sum(e[5] for e in mine):.2f} s")
            row += [len(mine), sum(e[0] for e in mine), sum(e[1] for e in mine), round(sum(e[5] for e in mine), 2)]
        table_rows.append(row)
        for rows, blocks, grads, prompts, lowest, seconds in log:
            print(f"   batch rows={rows} row-blocks={blocks} gradients={grads} prompts={prompts} lowest={lowest} "
                  f"{seconds:.3f} s")
        if name == "two-stage-ig":
            print("  layers finished per prompt:", [scores.screen_layers for scores in bag])
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
        print(text.getvalue()[:3000])
    summary = (f"fact={wanted} prompts={len(queries)} ig_s={totals['ig']:.2f} two_stage_s={totals['two-stage-ig']:.2f} "
               f"speedup={totals['ig'] / totals['two-stage-ig']:.2f}")
    print(summary)
    columns = ["estimator", "total (s)", "clean passes (s)", "clean-pass calls"]
    for label in ("gradient", "zero-baseline (forward-only)"):
        columns += [f"{label} batches", f"{label} rows", f"{label} row-blocks", f"{label} batches (s)"]
    write_results("profile_two_stage", command=command_line("profile_two_stage.py"), summary=summary_of(summary),
                  tables=[table(f"{wanted}, {len(queries)} prompts, one thread", columns, table_rows)])


if __name__ == "__main__":
    main()
