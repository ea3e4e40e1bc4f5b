"""Whole datasets: executors, cross-fact batching, compact scores, a Ray run with a killed worker, a cost model.

    flock /tmp/kneuron-timing.lock .venv/bin/python benchmarks/bench_scale.py           # 16 facts, 20 steps
    flock /tmp/kneuron-timing.lock .venv/bin/python benchmarks/bench_scale.py --quick   # 4 facts, 5 steps

Every process runs torch on ``--threads`` threads (1 by default: the local executor and each Ray worker alike,
so facts per hour compare one core against one core per worker). Side by side in one run:

1. SmolLM2-135M on the same built-in facts (known_only off, chunks of 16): facts per hour with the local
   executor and with Ray at 1 and 2 workers (a local Ray with 2 CPUs; each worker loads the model once), and
   whether the Ray atlases equal the local one row for row, score BLOBs byte for byte.
2. The cross-fact batching speed-up: the same facts in chunks of 1 (today's per-fact run) against chunks of
   16, and the share of the built-in set's prompts with a same-shape partner within their fact and within a
   chunk of 16 facts.
3. Bytes per prompt, full against sparse (from the local atlas's own scores), and the atlas size of the demo's
   32 facts (``kneuron run --per-relation 2``) in each mode.
4. ``--tiny-facts`` (default 1,000) synthetic facts on the tiny random Llama of tests/tiny_models.py through Ray
   on a two-node local cluster (``ray.cluster_utils.Cluster``, one CPU per node), one worker SIGKILLed once a
   third of the chunks are back: whether it finishes and its atlas equals the local run's.
5. A cost model from the measured per-prompt cost: PARAREL (253,448 prompts) on 1, 8 and 64 workers.

Last line: ``facts=N local_fph=X ray1_fph=Y ray2_fph=Z ray_equal_local=yes|no killed_worker_recovered=yes|no
cross_fact_speedup=S sparse_bytes_per_prompt=B full_bytes_per_prompt=F``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONUNBUFFERED", "1")

import torch  # noqa: E402

import kneuron  # noqa: E402
from json_results import command_line, summary_of, write_results  # noqa: E402  (benchmarks/)
from kneuron.facts import causal_templates, load_facts  # noqa: E402
from kneuron.parallel import RayExecutor  # noqa: E402
from kneuron.store import Atlas, run  # noqa: E402
from kneuron.store.chunks import same_shape_shares  # noqa: E402
from kneuron.store.runs import classify  # noqa: E402
from kneuron.store.scores import sparse_index  # noqa: E402

TESTS = Path(__file__).resolve().parent.parent / "tests"
PARAREL_PROMPTS, PARAREL_FACTS = 253_448, 27_738


def dump(path: Path) -> dict[str, list[tuple]]:
    sys.path.insert(0, str(TESTS))
    from store.helpers import dump as table_dump

    return table_dump(path)


def timed_run(lm, facts, path, **kwargs) -> float:
    start = time.perf_counter()
    summary = run(lm, facts, path, known_only=False, progress=False, **kwargs)
    assert summary.computed == len(facts), summary
    return time.perf_counter() - start


def real_model_part(args, folder: Path) -> dict[str, float | str]:
    import ray

    lm = kneuron.load()
    builtin = causal_templates(load_facts("builtin"))
    facts = builtin[:args.facts]
    prompts = sum(len(f.templates) for f in facts)
    common = {"steps": args.steps, "chunk_facts": 16, "keep_scores": "full"}
    out: dict[str, float | str] = {}
    shares = same_shape_shares(lm, builtin, 16)
    print(f"built-in set: {shares['prompts']:.0f} prompts; with a same-shape partner: {shares['within_fact']:.1%} "
          f"within their fact, {shares['within_chunk']:.1%} within a chunk of 16 facts")
    seconds_one = timed_run(lm, facts, folder / "chunk1.sqlite", **{**common, "chunk_facts": 1})
    seconds_local = timed_run(lm, facts, folder / "local.sqlite", **common)
    out["cross_fact_speedup"] = seconds_one / seconds_local
    out["local_fph"] = 3600 * len(facts) / seconds_local
    out["seconds_per_prompt"] = seconds_local / prompts
    print(f"SmolLM2, {len(facts)} facts ({prompts} prompts), {args.steps} steps: chunks of 1 {seconds_one:.1f} s, "
          f"chunks of 16 {seconds_local:.1f} s: cross-fact speed-up x{out['cross_fact_speedup']:.2f}")
    reference = dump(folder / "local.sqlite")
    equal = True
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for workers in (1, 2):
            executor = RayExecutor(None, workers=workers, threads=args.threads)
            path = folder / f"ray{workers}.sqlite"
            seconds = timed_run(lm, facts, path, executor=executor, **common)
            out[f"ray{workers}_fph"] = 3600 * len(facts) / seconds
            same = dump(path) == reference
            equal &= same
            print(f"Ray, {workers} worker(s): {seconds:.1f} s ({out[f'ray{workers}_fph']:.0f} facts/hour, "
                  f"model loads included), atlas equal to local: {same}")
    finally:
        ray.shutdown()
    out["ray_equal_local"] = "yes" if equal else "no"
    print(f"local: {seconds_local:.1f} s ({out['local_fph']:.0f} facts/hour)")

    kept = []
    with Atlas.open(folder / "local.sqlite", read_only=True) as atlas:
        stored = atlas.query("SELECT avg(length(scores) + length(activations)) AS n, max(dtype) AS dtype "
                             "FROM prompts")[0]
        for fact in facts:
            bag = atlas.prompt_scores(fact.id)
            kept += [len(sparse_index([s.scores for s in bag]))] * len(bag)
    full = int(stored["n"])  # the full BLOBs as stored (scores and activations)
    width = 8 if stored["dtype"] == "float64" else 4
    out["full_bytes_per_prompt"] = full
    out["sparse_bytes_per_prompt"] = (4 + 2 * width) * sum(kept) / len(kept)  # int32 index, score, activation
    ranks = classify(lm, builtin, known_only=True, top=10, min_share=0.5)
    taken: Counter[str] = Counter()
    demo_prompts = 0
    for fact, outcome in zip(builtin, ranks, strict=True):
        if outcome.get("status") == "pending" and taken[fact.relation] < 2:
            taken[fact.relation] += 1
            demo_prompts += len(fact.templates)
    print(f"bytes per prompt: full {full}, sparse {out['sparse_bytes_per_prompt']:.0f} "
          f"(x{full / out['sparse_bytes_per_prompt']:.0f} smaller); the demo's {sum(taken.values())} facts "
          f"({demo_prompts} prompts) hold {full * demo_prompts / 1e6:.1f} MB of full score BLOBs, "
          f"{out['sparse_bytes_per_prompt'] * demo_prompts / 1e6:.2f} MB sparse")
    per_prompt = float(out["seconds_per_prompt"])
    for workers in (1, 8, 64):
        hours = PARAREL_PROMPTS * per_prompt / workers / 3600
        print(f"cost model: PARAREL ({PARAREL_FACTS} facts, {PARAREL_PROMPTS} prompts) at {per_prompt:.2f} s/prompt "
              f"({args.steps} steps) on {workers} worker(s) of one such core: {hours:.0f} h")
    out["facts"] = len(facts)
    return out


def tiny_part(args, folder: Path) -> str:
    import ray
    from ray.cluster_utils import Cluster

    sys.path.insert(0, str(TESTS))
    from store.helpers import synthetic_facts
    from tiny_models import tiny_lm

    model = folder / "tiny-llama"
    tiny = tiny_lm("llama", layers=2, neurons=24)
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    lm = kneuron.load(str(model))
    facts = synthetic_facts(args.tiny_facts)
    seconds = timed_run(lm, facts, folder / "tiny-local.sqlite", steps=4)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    killed: list[int] = []
    chunks = -(-len(facts) // 16)
    back = [0]

    def kill_one(_result):
        back[0] += 1
        if not killed and back[0] >= chunks // 3:
            pid = next(pid for pid, numbers in executor.busy().items() if numbers)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False, configure_logging=False)
        executor = RayExecutor(str(model), workers=2, threads=1, on_result=kill_one)
        start = time.perf_counter()
        timed_run(lm, facts, folder / "tiny-ray.sqlite", steps=4, executor=executor)
        ray_seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
    equal = dump(folder / "tiny-ray.sqlite") == dump(folder / "tiny-local.sqlite")
    print(f"tiny Llama, {len(facts)} synthetic facts: local {seconds:.1f} s; Ray on two nodes {ray_seconds:.1f} s with "
          f"worker pid {killed[0] if killed else '-'} SIGKILLed ({executor.reruns} chunk(s) rerun, "
          f"{executor.replaced} worker replaced); atlas equal to local: {equal}")
    return "yes" if killed and equal else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 facts, 5 steps (a few minutes)")
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny-facts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.facts, args.steps = 4, 5
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        figures = real_model_part(args, Path(tmp))
        recovered = tiny_part(args, Path(tmp))
    line = (f"facts={figures['facts']} local_fph={figures['local_fph']:.0f} ray1_fph={figures['ray1_fph']:.0f} "
          f"ray2_fph={figures['ray2_fph']:.0f} ray_equal_local={figures['ray_equal_local']} "
          f"killed_worker_recovered={recovered} cross_fact_speedup={figures['cross_fact_speedup']:.2f} "
          f"sparse_bytes_per_prompt={figures['sparse_bytes_per_prompt']:.0f} "
          f"full_bytes_per_prompt={figures['full_bytes_per_prompt']}")
    write_results("bench_scale", command=command_line("bench_scale.py"), tables=[], summary=summary_of(line))
    print(line)


if __name__ == "__main__":
    main()
