"""cProfile of a small whole run (``kneuron.store.run``) on SmolLM2-135M, 1 thread: where the time of a cheap
estimator's run goes (issue 24: after gxa, the one-prompt answer_probability forwards and the identity hash).

    .venv/bin/python benchmarks/profile_run.py 4 gxa      # 4 built-in facts (24 prompts), every fact computed

Prints the run's total seconds and the 45 entries of highest cumulative time.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time

import torch

import kneuron
from kneuron.facts import load_facts
from kneuron.store import run


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    estimator = sys.argv[2] if len(sys.argv) > 2 else "gxa"
    torch.set_num_threads(1)
    lm = kneuron.load("smollm2-135m")
    facts = load_facts("builtin")[:count]
    with tempfile.TemporaryDirectory() as folder:
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        summary = run(lm, facts, f"{folder}/profile.sqlite", estimator=estimator, known_only=False, progress=False)
        profile.disable()
        print(f"total {time.perf_counter() - start:.2f} s, {summary.computed} facts, "
              f"{sum(len(f.templates) for f in facts)} prompts")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
