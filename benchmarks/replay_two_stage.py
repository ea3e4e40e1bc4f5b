"""two-stage-ig's rule replayed offline on dumped exact-IG gradients: which facts keep exact IG's refined neurons,
and a modelled speed-up, for many settings at once, on the demo's facts and on held-out ones.

    .venv/bin/python benchmarks/replay_two_stage.py dump demo.pt               # the demo's 16 facts
    .venv/bin/python benchmarks/replay_two_stage.py dump heldout.pt --which 2    # the 2nd fact of each relation
    .venv/bin/python benchmarks/replay_two_stage.py replay demo.pt heldout.pt --settings 2:0.7:0.8:1.0,2:0.9:0.9:1.5

``dump`` runs exact IG (20 right-Riemann steps) on SmolLM2-135M and keeps, per prompt, the gradient at every α
and layer (float32), the clean activations, P and each layer's zero baseline (about 23 MB a fact).

``replay`` runs :func:`kneuron.attribution.two_stage._two_stage` itself, unchanged, with its batches answered
from the dump (the real run's gradients are the same up to float rounding, so a fact whose neurons sit at a cut may
differ), and counts the batches it asks for, as the estimator makes them (the bag's prompts in one batch, at most
``--rows`` rows). A cost model fitted on a 1-thread profile of both estimators on SmolLM2 turns batches into
seconds: a gradient batch costs 29 ms + 3.24 ms per block it runs (reading the block's weights forward and
backward) + 1.13 ms per row (the output head, about 8 blocks' work) + 0.137 ms per row and block; a forward-only
batch half of that; a clean pass 0.175 s per prompt one by one (IG) or 0.05 s batched (two-stage-ig). IG is
modelled with its own batches (a prompt's 600 rows in one, its 30 baseline rows in another). A setting is
``screen_points:margin:top_margin:ablation_margin``. Last line: ``settings=N`` and, for the first setting,
``same_FILE=K/N speedup_FILE=X`` per file. ``replay`` writes its table to
``benchmarks/results/replay_two_stage.json`` (or ``--json PATH``): a row per setting, two columns per file.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections import Counter
from types import SimpleNamespace

import torch

from json_results import command_line, summary_of, table, write_results
from kneuron.attribution.integrated_gradients import alpha_points
from kneuron.attribution.selection import coarse_neurons, refined_keys

two_stage = importlib.import_module("kneuron.attribution.two_stage")  # the module (a function shadows some)
STEPS = 20
GRAD = (0.029, 3.24e-3, 1.13e-3, 0.137e-3)  # per batch, per block run, per row, per row-block (seconds)
FWD = tuple(x / 2 for x in GRAD)
PLAN_ONE, PLAN_BATCHED = 0.175, 0.05


def dump(path: str, which: int) -> None:
    import kneuron
    from kneuron.attribution.integrated_gradients import default_memory_budget, fill_zero_baselines, rows_per_batch
    from kneuron.attribution.step_rows import batches, make_plan, run_rows
    from kneuron.facts import encode, load_facts
    from kneuron.models.partial_forward import frozen_parameters
    from kneuron.store.runs import classify

    torch.set_num_threads(1)
    lm = kneuron.load()
    builtin = load_facts("builtin")
    seen: Counter[str] = Counter()
    facts = []
    for fact, outcome in zip(builtin, classify(lm, builtin, known_only=True, top=10, min_share=0.5), strict=True):
        if outcome.get("status") == "pending":
            seen[fact.relation] += 1
            if seen[fact.relation] == which:
                facts.append(fact)
    points = alpha_points(STEPS).tolist()
    out = []
    for fact in facts:
        plans = [make_plan(lm, encode(lm, prompt, fact.object), "prob") for prompt in fact.prompts()]
        grads = [torch.zeros((STEPS, *plan.activations.shape)) for plan in plans]
        baselines = {p: torch.full((lm.n_layers,), math.nan, dtype=torch.float64) for p in range(len(plans))}
        with frozen_parameters(lm.model):
            for p, plan in enumerate(plans):
                rows = rows_per_batch(lm, plan, default_memory_budget(lm), None)
                wanted = {layer: [(p, layer, a, True) for a in points] for layer in range(lm.n_layers)}
                for chunk in batches(wanted, rows):
                    for (_, layer, a, _), grad in zip(chunk, run_rows(lm, plans, chunk, "prob")[0], strict=True):
                        grads[p][points.index(a), layer] = grad.float()
                fill_zero_baselines(lm, plans, {p: list(range(lm.n_layers))}, baselines, rows, "prob")
        out.append({"fact": fact.id, "relation": fact.relation, "acts": [plan.activations.float() for plan in plans],
                    "grads": grads, "prob": [plan.probability for plan in plans],
                    "baselines": [baselines[p] for p in range(len(plans))]})
        torch.save(out, path)
        print(f"{fact.id}: {len(plans)} prompts", flush=True)


def _cost(kind: str, chunk: list, layers: int) -> float:
    c = GRAD if kind == "grad" else FWD
    return (c[0] + c[1] * (layers - min(r[1] for r in chunk)) + c[2] * len(chunk)
            + c[3] * sum(layers - r[1] for r in chunk))


def replay_fact(d: dict, rule: two_stage.ScreenRule, points: int, rows: int) -> tuple[bool, float, float]:
    """Whether the fact keeps exact IG's refined neurons, and the modelled seconds of two-stage-ig and of IG."""
    prompts, layers = len(d["acts"]), d["acts"][0].shape[0]
    alphas = alpha_points(STEPS).tolist()
    plans = [SimpleNamespace(activations=d["acts"][p].double(), probability=d["prob"][p]) for p in range(prompts)]
    asked: list[tuple[str, list]] = []

    def run(_lm, _plans, chunk, _objective, gradients=True, **_):
        asked.append(("grad" if gradients else "fwd", chunk))
        return ([d["grads"][p][alphas.index(a), layer].double() for p, layer, a, _ in chunk] if gradients else [],
                [0.0] * len(chunk))

    def baselines(_lm, _plans, layers_of, into, rows_, _objective, _frozen=False):
        chunk = [(p, layer, 0.0, False) for p, listed in layers_of.items() for layer in listed]
        asked.extend(("fwd", chunk[i:i + rows_]) for i in range(0, len(chunk), rows_))
        for p, listed in layers_of.items():
            for layer in listed:
                into[p][layer] = float(d["baselines"][p][layer])

    saved = two_stage.run_rows, two_stage.fill_zero_baselines
    two_stage.run_rows, two_stage.fill_zero_baselines = run, baselines
    try:
        sums, _, _ = two_stage._two_stage(SimpleNamespace(n_layers=layers, shared_layers=False), plans,
                                          [list(range(prompts))], [rows], list(range(layers)), alpha_points(STEPS),
                                          two_stage.screen_indices(STEPS, points), "prob", False, rule)
    finally:
        two_stage.run_rows, two_stage.fill_zero_baselines = saved
    mine = [plans[p].activations * sums[p] / STEPS for p in range(prompts)]
    exact = [a.double() * g.double().mean(0) for a, g in zip(d["acts"], d["grads"], strict=True)]
    same = _refined(mine) == _refined(exact)
    seconds = prompts * PLAN_BATCHED + sum(_cost(kind, chunk, layers) for kind, chunk in asked)
    ig_rows = [(0, layer, 0.0, True) for layer in range(layers) for _ in range(STEPS)]
    ig = prompts * (PLAN_ONE + sum(_cost("grad", ig_rows[i:i + 600], layers) for i in range(0, len(ig_rows), 600))
                    + _cost("fwd", [(0, layer, 0.0, False) for layer in range(layers)], layers))
    return same, seconds, ig


def _refined(scores: list[torch.Tensor]) -> set:
    return set(refined_keys([coarse_neurons(s, 0.2) for s in scores])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["dump", "replay"])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--which", type=int, default=1, help="dump: the n-th known fact of each relation")
    parser.add_argument("--settings", default="2:0.7:0.8:1.0,2:0.5:0.8:1.0,2:0.9:0.9:1.5,1:0.7:0.8:1.0")
    parser.add_argument("--rows", type=int, default=390, help="rows per batch (SmolLM2's with the 2 GiB budget)")
    parser.add_argument("--json", default=None, help="replay: where to write the results (default benchmarks/results/)")
    args = parser.parse_args()
    if args.action == "dump":
        dump(args.files[0], args.which)
        return
    sets = {path: torch.load(path, weights_only=True) for path in args.files}
    last, rows = [], []
    for number, setting in enumerate(args.settings.split(",")):
        fields = setting.split(":")
        rule = two_stage.ScreenRule(0.2, "adaptive", *(float(x) for x in fields[1:4]))
        line, row = [setting], [setting + (" (default)" if setting == "2:0.7:0.8:1.0" else "")]
        for path, facts in sets.items():
            results = [replay_fact(d, rule, int(fields[0]), args.rows) for d in facts]
            same = sum(r[0] for r in results)
            speedup = sum(r[2] for r in results) / sum(r[1] for r in results)
            line.append(f"{path}: same {same}/{len(facts)}, modelled {speedup:.2f}x")
            row += [f"{same}/{len(facts)}", round(speedup, 2)]
            if number == 0:
                name = path.rsplit("/", 1)[-1].removesuffix(".pt")
                last.append(f"same_{name}={same}/{len(facts)} speedup_{name}={speedup:.2f}")
        print("  ".join(line), flush=True)
        rows.append(row)
    summary = f"settings={len(args.settings.split(','))} " + " ".join(last)
    print(summary)
    columns = ["setting (points:margin:top:ablation)"]
    for path, facts in sets.items():
        name = path.rsplit("/", 1)[-1]
        columns += [f"{name} ({len(facts)} facts): same refined", f"{name}: modelled speed-up"]
    write_results("replay_two_stage", command=command_line("replay_two_stage.py"), summary=summary_of(summary),
                  tables=[table("two-stage-ig's rule replayed on dumped exact-IG gradients", columns, rows)],
                  path=args.json)


if __name__ == "__main__":
    main()
