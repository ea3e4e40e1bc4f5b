"""Whole-run throughput per estimator: facts per hour of ``kneuron.store.run`` from start to end, the code before
issue 24's batching (old) and after it (new), side by side in one process on SmolLM2-135M.

    flock /tmp/kneuron-timing.lock .venv/bin/python benchmarks/bench_run_throughput.py --facts 8
    .venv/bin/python benchmarks/bench_run_throughput.py --facts 4 --estimators gxa --repeats 1   # quicker

A run is what ``kneuron run --estimator X`` does after loading the model: the model's identity hash, the known
filter, attribution, refining, the answer probability and rank of every prompt, the activation baseline, the
writes, the generic-neuron table. The facts are the first ``--facts`` built-in facts the model knows (the known
filter runs in every run anyway, as in ``kneuron run``). For each estimator the two paths run alternately
``--repeats`` times into fresh atlases; the best wall-clock run of each counts:

* **old**: one forward pass per prompt for the probabilities, the output head at every position
  (:func:`kneuron.facts.probabilities.answer_probability_one_by_one`, which is the code the run had before), put
  in place of :func:`~kneuron.facts.probabilities.answer_probability_many` for that run only;
* **new**: each fact's prompts in one padded batch, the head at the answer positions only.

Both paths drop the model's cached identity hash before each run, so each pays the one hash a fresh ``kneuron
run`` process pays (the algorithm and its value cannot change: atlases hold it). What the cache saves when the
same model object is hashed again (a second run in one process, the study runner's identity check, a server's
probe) is measured on its own: ``identity_hash_s`` (fresh) against ``identity_cached_s``.

Also checked, not only timed: the two paths' atlases store the same refined neurons and ranks, and
probabilities within float32 rounding (``max_prob_rel_diff``).

Estimator names: ``ig`` (exact integrated gradients, 20 steps), ``gxa``, ``lpi``, ``two-stage-ig``, or ``screenK``
(``--screen K``: screened exact IG in each fact's K best layers by gxa).

Writes ``benchmarks/results/run_throughput.json`` (``--out``) and, as the last line,
``gxa_facts_per_hour_old=X gxa_facts_per_hour_new=Y gxa_ratio=R ...`` for each estimator, ``identity_hash_s=S
identity_cached_s=C load=L``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONUNBUFFERED", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kneuron  # noqa: E402
from kneuron.facts import known_facts, load_facts  # noqa: E402
from kneuron.facts.probabilities import answer_probability_one_by_one  # noqa: E402
from kneuron.models.identity import atlas_fingerprint, forget_weights_digests  # noqa: E402
from kneuron.store import Atlas, chunks, run  # noqa: E402


def run_once(lm, facts, estimator: str, path: Path, old: bool) -> dict:
    """One whole run into a fresh atlas at ``path``: wall and CPU seconds, and what it stored."""
    forget_weights_digests(lm)  # both paths pay the hash a fresh process pays
    settings = ({"screen": int(estimator.removeprefix("screen"))} if estimator.startswith("screen")
                else {"estimator": estimator})
    batched = chunks.answer_probability_many
    if old:
        chunks.answer_probability_many = lambda lm, queries: answer_probability_one_by_one(lm, queries)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = run(lm, facts, path, progress=False, overwrite=True, **settings)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        chunks.answer_probability_many = batched
    with Atlas.open(path, read_only=True) as atlas, atlas.snapshot():
        refined = {fact_id: sorted(n.key for n in ns) for fact_id, ns in atlas.all_refined().items()}
        prompts = {(r["fact_id"], r["idx"]): (r["probability"], r["rank"]) for r in atlas.prompt_rows()}
    return {"wall": wall, "cpu": cpu, "computed": summary.computed, "refined": refined, "prompts": prompts}


def compare(old: dict, new: dict) -> dict:
    """Whether the two paths stored the same results: refined neurons, ranks, probabilities (relative diff)."""
    same_keys = old["prompts"].keys() == new["prompts"].keys()
    diffs = [abs(a[0] - b[0]) / max(abs(a[0]), 1e-30) for k, a in old["prompts"].items()
             if (b := new["prompts"].get(k)) is not None]
    return {"same_refined": old["refined"] == new["refined"],
            "same_ranks": same_keys and all(old["prompts"][k][1] == new["prompts"][k][1] for k in old["prompts"]),
            "max_prob_rel_diff": max(diffs) if diffs else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--estimators", default="gxa,ig,screen6")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "run_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    lm = kneuron.load("smollm2-135m")
    facts = known_facts(lm, load_facts("builtin"))[0][:args.facts]
    prompts = sum(len(f.templates) for f in facts)
    print(f"{len(facts)} known built-in facts ({prompts} prompts), {args.threads} thread(s), load {load:.1f}")

    start = time.perf_counter()
    atlas_fingerprint(lm, fresh=True)
    hash_fresh = time.perf_counter() - start
    start = time.perf_counter()
    atlas_fingerprint(lm)
    hash_cached = time.perf_counter() - start
    print(f"identity hash: {hash_fresh:.2f} s fresh, {hash_cached * 1000:.1f} ms from the cache")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for estimator in [e.strip() for e in args.estimators.split(",") if e.strip()]:
            best: dict[str, dict] = {}
            for repeat in range(args.repeats):
                for path_name in ("old", "new") if repeat % 2 == 0 else ("new", "old"):
                    found = run_once(lm, facts, estimator, Path(folder) / f"{estimator}-{path_name}.sqlite",
                                     old=path_name == "old")
                    if path_name not in best or found["wall"] < best[path_name]["wall"]:
                        best[path_name] = found
            old, new = best["old"], best["new"]
            entry = {"facts": len(facts), "prompts": prompts,
                     **{f"{name}_wall_s": best[name]["wall"] for name in ("old", "new")},
                     **{f"{name}_cpu_s": best[name]["cpu"] for name in ("old", "new")},
                     **{f"facts_per_hour_{name}": len(facts) * 3600 / best[name]["wall"] for name in ("old", "new")},
                     "ratio": old["wall"] / new["wall"], **compare(old, new)}
            results[estimator] = entry
            print(f"{estimator}: old {old['wall']:.1f} s ({entry['facts_per_hour_old']:.0f} facts/h), new "
                  f"{new['wall']:.1f} s ({entry['facts_per_hour_new']:.0f} facts/h): {entry['ratio']:.2f}x; same "
                  f"refined {entry['same_refined']}, same ranks {entry['same_ranks']}, max probability rel diff "
                  f"{entry['max_prob_rel_diff']:.1e}")
    load_after = os.getloadavg()[0]
    report = {"model": lm.name, "threads": args.threads, "repeats": args.repeats, "load_before": load,
              "load_after": load_after, "identity_hash_s": hash_fresh, "identity_cached_s": hash_cached,
              "estimators": results, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    fields = [f"{e}_{k}={v:.4g}" for e, entry in results.items()
              for k, v in (("facts_per_hour_old", entry["facts_per_hour_old"]),
                           ("facts_per_hour_new", entry["facts_per_hour_new"]), ("ratio", entry["ratio"]))]
    print(" ".join(fields + [f"identity_hash_s={hash_fresh:.3g}", f"identity_cached_s={hash_cached:.3g}",
                             f"load={np.mean([load, load_after]):.1f}"]))


if __name__ == "__main__":
    main()
