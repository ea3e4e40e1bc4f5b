"""``kneuron serve`` on a large atlas against a small one, side by side: start-up and each page type's time.

The small atlas: the ten tiny facts of the tests on the tiny Llama (full score matrices). The large one: the same
rows copied ``COPIES`` times under new fact ids, subjects and relations (``capital#17``, ...): ``COPIES x 10`` facts
with their prompts, neurons and study rows, so every table is ``COPIES`` times larger and every page has the same
shape of answer. A page that scans a table takes ``COPIES`` times longer there; one that reads through the atlas's
indexes takes about as long. Printed: seconds in each and their ratio (large / small), the best of ``REPEATS``
runs, for a page's first request (a fresh app) and for the same request again (the overview and relation pages are
kept per state of the atlas, :mod:`kneuron.serve.cache`; the other pages are read each time), in one process on one
thread (``torch.set_num_threads(1)``; the server does no torch work here).

Run: ``.venv/bin/python benchmarks/bench_serve.py [COPIES]`` (default 2000: 20,000 facts, a 279 MB atlas
in ``/tmp``, built once and reused; the tiny model's prompts are 2 x 32 neurons, so the atlas is small for its facts).
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from json_results import command_line, table, write_results  # noqa: E402  (benchmarks/, the script's folder)

REPEATS = 5
COPIES = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


def small_atlas(folder: Path) -> Path:
    from serve.conftest import make_atlas

    path = folder / "small.sqlite"
    if not path.exists():
        make_atlas(path)
    return path


def large_atlas(small: Path, folder: Path, copies: int) -> Path:
    """``copies`` copies of every fact of ``small`` (new id, subject and relation per copy) in one file."""
    path = folder / f"large-{copies}.sqlite"
    if path.exists():
        return path
    partial = folder / f"large-{copies}.partial.sqlite"
    shutil.copyfile(small, partial)
    db = sqlite3.connect(partial)
    seq = db.execute("SELECT max(seq) + 1 FROM facts").fetchone()[0]
    facts = db.execute("SELECT count(*) FROM facts").fetchone()[0]
    for copy in range(1, copies):
        suffix = f"#{copy}"
        rel = f"'#{copy % 100}'"
        db.execute(f"INSERT INTO facts SELECT id || '{suffix}', seq + {seq * copy}, relation || {rel}, "
                   f"subject || '{suffix}', object, templates, status, known, known_share, ranks, note, params, "
                   f"compute_seconds, write_seconds FROM facts WHERE instr(id, '#') = 0")
        db.execute(f"INSERT INTO prompts SELECT fact_id || '{suffix}', idx, template, text, probability, rank, "
                   "objective, position, dtype, layers, neurons, scores, activations, baseline, completeness_gap "
                   "FROM prompts WHERE instr(fact_id, '#') = 0")
        db.execute(f"INSERT INTO neurons SELECT fact_id || '{suffix}', kind, prompt, rank, layer, neuron, score "
                   "FROM neurons WHERE instr(fact_id, '#') = 0")
        db.execute(f"INSERT INTO results SELECT study, variant, CASE WHEN relation = '' THEN '' ELSE relation || "
                   f"{rel} END, CASE WHEN fact_id = '' THEN '' ELSE fact_id || '{suffix}' END, metric, value "
                   "FROM results WHERE instr(fact_id, '#') = 0 AND fact_id != ''")
        if copy % 200 == 0:
            db.commit()
    db.commit()
    db.close()
    partial.rename(path)
    print(f"built {path} ({copies * facts:,} facts, {path.stat().st_size / 2**20:,.0f} MB)", flush=True)
    return path


def best(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


URLS = {"overview": "/", "relation": "/relation/capital", "fact": "/fact/capital%3AFrance",
        "neuron": "/neuron/L0.N15", "prompt cells": "/api/fact/capital%3AFrance/prompt/0/cells",
        "search (subject)": "/search?q=Italy", "study": "/study/suppress_amplify?variant=kn&metric=suppress"}


def measure(path: Path) -> dict[str, tuple[float, float]]:
    """Per page: (first request of a fresh app, a request again), best of REPEATS each; start-up: create_app."""
    from fastapi.testclient import TestClient

    from kneuron.serve.app import create_app

    found = {"start-up (create_app)": (best(lambda: create_app(path)), math.nan)}
    for name, url in URLS.items():
        def first(url=url):
            with TestClient(create_app(path)) as client:
                start = time.perf_counter()
                assert client.get(url).status_code == 200, url
                return time.perf_counter() - start

        cold = min(first() for _ in range(REPEATS))
        with TestClient(create_app(path)) as client:
            client.get(url)
            again = best(lambda url=url: client.get(url))
        found[name] = (cold, again)
    return found


def main() -> None:
    torch.set_num_threads(1)
    folder = Path(tempfile.gettempdir()) / "kneuron-bench-serve"
    folder.mkdir(exist_ok=True)
    small = small_atlas(folder)
    large = large_atlas(small, folder, COPIES)
    facts = sqlite3.connect(large).execute("SELECT count(*) FROM facts").fetchone()[0]
    print(f"small atlas: 10 facts, {small.stat().st_size / 2**20:.1f} MB; large: {facts:,} facts, "
          f"{large.stat().st_size / 2**20:,.0f} MB; best of {REPEATS}, one thread")
    a, b = measure(small), measure(large)
    print(f"{'':24} {'first request: small s':>22} {'large s':>9} {'ratio':>7}   {'again: small s':>14} "
          f"{'large s':>9} {'ratio':>7}")
    rows = []
    for name in a:
        (c1, w1), (c2, w2) = a[name], b[name]
        print(f"{name:24} {c1:22.4f} {c2:9.4f} {c2 / c1:7.1f}   {w1:14.4f} {w2:9.4f} {w2 / w1:7.1f}")
        rows.append([name, c1, c2, c2 / c1, w1, w2, w2 / w1])
    columns = ["page", "first request: small s", "large s", "ratio", "again: small s", "large s", "ratio"]
    write_results("bench_serve", command=command_line("bench_serve.py"), summary={"large_facts": facts},
                  tables=[table(f"Page times, 10 facts against {facts:,} facts (best of {REPEATS}, one thread)",
                                columns, rows)])


if __name__ == "__main__":
    main()
