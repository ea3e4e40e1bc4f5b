"""Cheaper estimators against exact integrated gradients, side by side in one process on SmolLM2-135M.

    flock /tmp/kneuron-timing.lock .venv/bin/python benchmarks/bench_estimators.py            # 16 facts
    flock /tmp/kneuron-timing.lock .venv/bin/python benchmarks/bench_estimators.py --facts 4  # quicker

The facts are the demo's: the built-in facts the model knows, the first ``--per-relation`` of each relation
(16 facts, 1 per relation, by default). Per fact (its bag of prompts, one ``attribute`` call per estimator,
in this order): exact IG (20 steps, the paper's right Riemann sum), gradient x activation (gxa), log
probability increase (lpi, when registered and the model supports it), Gauss–Legendre IG with 5 points, and
screen-then-exact (``ScreenedIntegratedGradients``) for each K of ``--screen-ks``, and two-stage
integrated gradients (``TwoStageIntegratedGradients``) for each ``screen_points:margin:top_margin:ablation_margin``
of ``--two-stage``.
Torch runs on ``--threads`` threads (1 by default).

Per estimator, against exact IG on the same prompts:

* speed-up: IG's seconds per prompt over the estimator's (each timed over the same bags);
* Spearman correlation of the (layers x neurons) scores per prompt, over all neurons, averaged;
* recall of IG's top-10 neurons per prompt (share of them in the estimator's top 10);
* Jaccard of the refined sets (same threshold 0.2 and adaptive share) per fact, averaged (two empty sets: 1).

lpi runs once over all the facts' prompts (as ``kneuron run --estimator lpi`` does per chunk of 16 facts): its
per-layer vocabulary x neuron matrix is built once per call and shared by the call's prompts, so one call per
fact would pay it for every bag of 6.

For the screen, per K: the share of facts whose refined neurons equal full IG's, the speed-up per prompt (the
screen's own gxa pass included), and for each fact that differs the reason: ``max_outside`` (a prompt's
maximum IG score lies in a layer the screen left out, so the coarse threshold, 0.2 of the maximum, moved),
``coarse_outside`` (the maxima are in, but a coarse neuron of full IG lies outside), ``other``.

Gauss–Legendre against a 200-step right Riemann sum (the reference integral) on the first ``--reference-prompts``
prompts of the first fact (none with 0): the relative max error of the 20-step sum and of the 5-point quadrature.

The JSON (``benchmarks/results/bench_estimators.json``, rendered on the docs' benchmarks page) holds the table above
and two-stage-ig's trade-off curve: per ``--two-stage`` setting, the speed-up against the share of facts whose refined
neurons are exact IG's. Before the facts, one untimed call of IG and of each two-stage setting takes the process's
one-time costs. Per fact the clean passes are also timed one prompt at a time (as IG runs them) and as one batch (as
two-stage-ig runs them, :func:`~kneuron.attribution.step_rows.make_plans`): IG with batched clean passes is estimated
as IG's time less that saving, and the curve gives the speed-up against it too.

Last line: ``gxa_speedup=X gxa_spearman=R gxa_refined_jaccard=J lpi_speedup=X lpi_spearman=R
lpi_refined_jaccard=J screen_k=K screen_speedup=S screen_same_refined=P two_stage_speedup=S
two_stage_same_refined=P ig_batched_plans_s_per_prompt=S load_start=L`` (fields ``na`` for an estimator not
measured; ``screen_k`` is ``--screen-k``, declared
before measuring, 6 by default; two_stage is the first ``--two-stage`` setting).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter, defaultdict

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONUNBUFFERED", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kneuron  # noqa: E402
from json_results import command_line, summary_of, table, write_results  # noqa: E402  (benchmarks/)
from kneuron.attribution import coarse_neurons, refine  # noqa: E402
from kneuron.attribution.estimators import (  # noqa: E402
    ESTIMATORS,
    GradientTimesActivation,
    IntegratedGradients,
    ScreenedIntegratedGradients,
    TwoStageIntegratedGradients,
)
from kneuron.attribution.step_rows import make_plan, make_plans  # noqa: E402
from kneuron.errors import KneuronError  # noqa: E402
from kneuron.facts import encode, load_facts  # noqa: E402
from kneuron.store.runs import classify  # noqa: E402
from kneuron.studies.estimator_agreement import jaccard, spearman, top_recall  # noqa: E402


def why_differs(full_bag, chosen: list[int]) -> str:
    """Why a screened fact's refined neurons differ from full IG's (see the module docstring)."""
    inside = set(chosen)
    for scores in full_bag:
        top_layer = int(torch.argmax(scores.scores.max(dim=1).values))
        if top_layer not in inside:
            return "max_outside"
    if any(n.layer not in inside for scores in full_bag for n in coarse_neurons(scores)):
        return "coarse_outside"
    return "other"


def compare(into: dict[str, list[float]], bag, full) -> bool:
    """Add one fact's agreement figures to ``into``; whether its refined neurons equal full IG's."""
    refined, reference = refine(bag), refine(full)
    same = set(refined.keys) == set(reference.keys)  # the same neurons (their order by mean score may differ)
    into["jaccard"].append(jaccard(refined.keys, reference.keys))
    into["same_refined"].append(float(same))
    if bag[0].screen_layers is not None:  # layers finished (two-stage) or computed (screen) per prompt
        into["layers"].extend(len(scores.screen_layers) for scores in bag)
    for mine, theirs in zip(bag, full, strict=True):
        into["spearman"].append(spearman(theirs.scores.numpy(), mine.scores.numpy()))
        into["recall10"].append(top_recall(theirs.scores.numpy(), mine.scores.numpy()))
    return same


def timed(estimator, lm, queries, answer):
    start = time.perf_counter()
    bag = estimator.attribute(lm, queries, answer)
    return bag, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-relation", type=int, default=1)
    parser.add_argument("--facts", type=int, default=None, help="at most this many facts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--screen-k", type=int, default=6, help="the K of the last line")
    parser.add_argument("--screen-ks", default="4,6,8")
    parser.add_argument("--reference-prompts", type=int, default=2)
    parser.add_argument("--two-stage", default="2:0.7:0.8:1.0,2:0.5:0.8:1.0,2:0.9:0.9:1.5,1:0.7:0.8:1.0",
                        help="two-stage-ig settings to measure, each screen_points:margin[:top_margin"
                             "[:ablation_margin]] (the first is the last line's)")
    parser.add_argument("--skip", default="", help="comma list of estimators not to measure (e.g. lpi,screen4)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    ks = sorted({int(k) for k in args.screen_ks.split(",")} | {args.screen_k})
    lm = kneuron.load()
    builtin = load_facts("builtin")
    outcomes = classify(lm, builtin, known_only=True, top=10, min_share=0.5)
    taken: Counter[str] = Counter()
    facts = []
    for fact, outcome in zip(builtin, outcomes, strict=True):
        if outcome.get("status") == "pending" and taken[fact.relation] < args.per_relation:
            taken[fact.relation] += 1
            facts.append(fact)
    facts = facts[:args.facts] if args.facts else facts
    prompts = sum(len(f.prompts()) for f in facts)
    print(f"SmolLM2-135M ({lm.n_layers} layers x {lm.n_neurons} neurons), {len(facts)} facts, {prompts} prompts, "
          f"torch threads {torch.get_num_threads()}")
    estimators = {"ig": IntegratedGradients(), "gxa": GradientTimesActivation()}
    if "lpi" in ESTIMATORS:
        estimators["lpi"] = ESTIMATORS["lpi"]()
    estimators["ig-gauss5"] = IntegratedGradients(steps=5, alphas="gauss")
    for k in ks:
        estimators[f"screen{k}"] = ScreenedIntegratedGradients(k)
    two_stage = []
    for setting in filter(None, args.two_stage.split(",")):
        fields = setting.split(":")
        options = dict(zip(("screen_points", "margin", "top_margin", "ablation_margin"), fields, strict=False))
        name = "two-stage " + ":".join(fields)
        estimators[name] = TwoStageIntegratedGradients(**{key: int(value) if key == "screen_points" else float(value)
                                                          for key, value in options.items()})
        two_stage.append(name)
    for name in filter(None, args.skip.split(",")):
        if name == "ig" or name not in estimators:
            raise SystemExit(f"--skip {name}: not one of {', '.join(n for n in estimators if n != 'ig')}")
        del estimators[name]
    seconds: dict[str, float] = defaultdict(float)
    measures: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    unavailable: dict[str, str] = {}
    fulls: dict[str, list] = {}
    # untimed warm-up: the first call of a process pays one-time costs (allocations, kernels) that fact 1 would carry
    warm = [encode(lm, prompt, facts[0].object) for prompt in facts[0].prompts()][:2]
    IntegratedGradients(steps=2).attribute(lm, warm, facts[0].object)
    for name in two_stage:
        estimators[name].attribute(lm, warm, facts[0].object)
    for number, fact in enumerate(facts, 1):
        queries = [encode(lm, prompt, fact.object) for prompt in fact.prompts()]
        # the clean passes one prompt at a time (as IG runs them) and as one batch (as two-stage-ig runs them)
        start = time.perf_counter()
        with torch.no_grad():
            [make_plan(lm, query, "prob") for query in queries]
        seconds["plans one by one"] += time.perf_counter() - start
        start = time.perf_counter()
        make_plans(lm, queries, "prob")
        seconds["plans batched"] += time.perf_counter() - start
        full, spent = timed(estimators["ig"], lm, queries, fact.object)
        seconds["ig"] += spent
        fulls[fact.id] = full
        line = [f"fact {number}/{len(facts)} {fact.id}: ig {spent / len(queries):.2f} s/prompt"]
        for name, estimator in estimators.items():
            if name in ("ig", "lpi") or name in unavailable:
                continue
            try:
                bag, spent = timed(estimator, lm, queries, fact.object)
            except KneuronError as exc:
                unavailable[name] = str(exc)
                print(f"{name} not available on this model: {exc}")
                continue
            seconds[name] += spent
            line.append(f"{name} {spent / len(queries):.3f}")
            same = compare(measures[name], bag, full)
            if isinstance(estimator, ScreenedIntegratedGradients) and not same:
                reasons[name][why_differs(full, list(bag[0].screen_layers or ()))] += 1
        print(", ".join(line), flush=True)
    if "lpi" in estimators:
        queries = [encode(lm, prompt, fact.object) for fact in facts for prompt in fact.prompts()]
        try:
            start = time.perf_counter()
            everything = estimators["lpi"].attribute(lm, queries)
            seconds["lpi"] = time.perf_counter() - start
            print(f"lpi: {seconds['lpi'] / len(queries):.2f} s/prompt over one call of {len(queries)} prompts")
            for fact in facts:
                count = len(fact.prompts())
                bag, everything = everything[:count], everything[count:]
                compare(measures["lpi"], bag, fulls[fact.id])
        except KneuronError as exc:
            print(f"lpi not available on this model: {exc}")
    per_prompt = {name: value / prompts for name, value in seconds.items()}
    print("\n| estimator | s/prompt | speed-up vs IG | Spearman | top-10 recall | refined Jaccard | same refined |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| ig (20 steps) | {per_prompt['ig']:.3f} | 1 | 1 | 1 | 1 | 100% |")
    for name in estimators:
        if name == "ig" or name not in measures:
            continue
        m = measures[name]
        print(f"| {name} | {per_prompt[name]:.3f} | {per_prompt['ig'] / per_prompt[name]:.1f}x | "
              f"{np.mean(m['spearman']):.3f} | {np.mean(m['recall10']):.3f} | {np.mean(m['jaccard']):.3f} | "
              f"{np.mean(m['same_refined']):.0%} |")
    saved = (seconds["plans one by one"] - seconds["plans batched"]) / prompts
    print(f"clean passes: {seconds['plans one by one'] / prompts:.3f} s/prompt one by one (as IG runs them), "
          f"{seconds['plans batched'] / prompts:.3f} batched per fact (as two-stage-ig does); IG with batched clean "
          f"passes would take about {per_prompt['ig'] - saved:.3f} s/prompt")
    for k in ks:
        name = f"screen{k}"
        if reasons[name]:
            print(f"screen K={k}: differing facts by reason: "
                  + ", ".join(f"{why} {n}" for why, n in reasons[name].most_common()))

    # Gauss-Legendre against a 200-step reference integral (none with --reference-prompts 0)
    first = [encode(lm, prompt, facts[0].object) for prompt in facts[0].prompts()][:args.reference_prompts]
    exact = IntegratedGradients(steps=200).attribute(lm, first, facts[0].object) if first else []
    for name, estimator in (("right 20", IntegratedGradients()), ("gauss 4", IntegratedGradients(4, "gauss")),
                            ("gauss 5", IntegratedGradients(5, "gauss")), ("gauss 6", IntegratedGradients(6, "gauss"))):
        if not first:
            break
        bag = estimator.attribute(lm, first, facts[0].object)
        pairs = list(zip(bag, exact, strict=True))
        worst = max(float((b.scores - e.scores).abs().max() / e.scores.abs().max()) for b, e in pairs)
        l2 = max(float((b.scores - e.scores).norm() / e.scores.norm()) for b, e in pairs)
        coarse = np.mean([jaccard(coarse_neurons(b), coarse_neurons(e))
                          for b, e in pairs])
        print(f"{name} against 200 steps ({len(first)} prompts of {facts[0].id}): relative error max-norm "
              f"{worst:.2e}, L2 {l2:.2e}; coarse Jaccard {coarse:.3f}")

    def fields(name: str, short: str) -> str:
        if name not in measures:
            return f"{short}_speedup=na {short}_spearman=na {short}_refined_jaccard=na"
        m = measures[name]
        return (f"{short}_speedup={per_prompt['ig'] / per_prompt[name]:.1f} "
                f"{short}_spearman={np.mean(m['spearman']):.3f} {short}_refined_jaccard={np.mean(m['jaccard']):.3f}")

    def same_and_speed(name: str, short: str) -> str:
        if name not in measures:
            return f"{short}_speedup=na {short}_same_refined=na"
        return (f"{short}_speedup={per_prompt['ig'] / per_prompt[name]:.1f} "
                f"{short}_same_refined={np.mean(measures[name]['same_refined']):.2f}")

    line = (f"{fields('gxa', 'gxa')} {fields('lpi', 'lpi')} screen_k={args.screen_k} "
            f"{same_and_speed(f'screen{args.screen_k}', 'screen')} "
            f"{same_and_speed(two_stage[0] if two_stage else '', 'two_stage')} "
            f"ig_batched_plans_s_per_prompt={per_prompt['ig'] - saved:.3f} load_start={load_before:.1f}")
    rows = [["ig (20 steps)", round(per_prompt["ig"], 3), 1.0, 1.0, 1.0, 1.0, f"{len(facts)}/{len(facts)}", None],
            ["ig, its clean passes batched per fact (estimated: ig − the clean passes' measured saving)",
             round(per_prompt["ig"] - saved, 3), round(per_prompt["ig"] / (per_prompt["ig"] - saved), 2),
             None, None, None, None, None]]
    for name in estimators:
        if name == "ig" or name not in measures:
            continue
        m = measures[name]
        rows.append([name, round(per_prompt[name], 3), round(per_prompt["ig"] / per_prompt[name], 2),
                     round(float(np.mean(m["spearman"])), 3), round(float(np.mean(m["recall10"])), 3),
                     round(float(np.mean(m["jaccard"])), 3), f"{int(sum(m['same_refined']))}/{len(m['same_refined'])}",
                     round(float(np.mean(m["layers"])), 1) if m["layers"] else None])
    columns = ["estimator", "s/prompt", "speed-up vs IG", "Spearman", "top-10 recall", "refined Jaccard",
               "same refined neurons (facts)", "layers finished per prompt"]
    curve = [[name.removeprefix("two-stage "), round(per_prompt["ig"] / per_prompt[name], 2),
              round((per_prompt["ig"] - saved) / per_prompt[name], 2),
              round(float(np.mean(measures[name]["same_refined"])), 3),
              f"{int(sum(measures[name]['same_refined']))}/{len(measures[name]['same_refined'])}",
              round(float(np.mean(measures[name]["layers"])), 1)]
             for name in sorted((n for n in two_stage if n in measures),
                                key=lambda n: per_prompt["ig"] / per_prompt[n])]
    tables = [table(f"Against exact IG on {len(facts)} facts ({prompts} prompts), SmolLM2-135M, "
                    f"{torch.get_num_threads()} thread(s), load average {load_before:.1f} at the start", columns, rows)]
    if curve:
        tables.append(table("two-stage-ig's trade-off: speed-up against the share of facts whose refined neurons "
                            "are exact IG's (setting = screen_points:margin:top_margin:ablation_margin)",
                            ["setting", "speed-up vs IG", "vs IG with batched clean passes", "share same refined",
                             "facts", "layers finished per prompt"],
                            curve))
    write_results("bench_estimators", command=command_line("bench_estimators.py"), tables=tables,
                  summary=summary_of(line))
    print(line)


if __name__ == "__main__":
    main()
