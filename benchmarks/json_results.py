"""The JSON a benchmark writes beside its printed output: what the docs' benchmarks and findings pages render.

Each benchmark ends with :func:`write_results`, which writes ``benchmarks/results/NAME.json`` (or ``--json PATH``)::

    {"benchmark": "bench_attribution", "command": "make bench", "when": "2026-12-07T13:40Z",
     "machine": {"torch": "2.13.0+cpu", "threads": 2, "cpus": 2, "load_average": 1.2},
     "tables": [{"title": ..., "columns": [...], "rows": [[...], ...]}], "summary": {"key": value, ...}}

``tables`` are what the benchmark prints as tables, ``summary`` its last ``key=value`` line. The docs' hook
(``docs/hooks.py``, ``<!-- results: benchmarks/results/NAME.json -->``) renders them at build time, so a page shows
the numbers of the last committed run and names the command and the moment that made them. Timings on a shared
machine are noisy: the machine block says what the run had (the load average too).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: where the committed results live
RESULTS = Path(__file__).resolve().parent / "results"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null, tuples as lists, numbers as they are."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """One table of a results file."""
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}


def write_results(name: str, *, command: str, tables: list[dict[str, Any]], summary: dict[str, Any],
                  path: str | Path | None = None) -> Path:
    """Write ``benchmarks/results/NAME.json`` (or ``path``) and print where; returns the path."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    data = {
        "benchmark": name,
        "command": command,
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                    "load_average": None if load is None else round(load, 2)},
        "tables": tables,
        "summary": summary,
    }
    target = Path(path) if path is not None else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(_clean(data), indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                         encoding="utf-8")
    os.replace(temporary, target)
    print(f"results: {target}")
    return target


def summary_of(line: str) -> dict[str, Any]:
    """A benchmark's last ``key=value ...`` line as a dict, numbers as numbers."""
    out: dict[str, Any] = {}
    for item in line.split():
        key, _, value = item.partition("=")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def command_line(script: str) -> str:
    """How this benchmark was started: ``python benchmarks/SCRIPT ARGS``."""
    return " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])
