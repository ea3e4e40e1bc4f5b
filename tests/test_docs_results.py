"""The figures of the docs' findings and benchmarks pages come from JSON files: every file a page names exists and
is well formed, and the docs' hook renders what a benchmark writes (``benchmarks/json_results.py``)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NAMED = sorted({m for page in ("findings.md", "benchmarks.md")
                for m in re.findall(r"<!-- results: (\S+) -->", (ROOT / "docs" / page).read_text(encoding="utf-8"))})


def test_the_pages_name_their_results_files():
    assert {"docs/data/findings-smollm2.json", "benchmarks/results/bench_attribution.json",
            "benchmarks/results/bench_norm_completeness.json"} <= set(NAMED)


@pytest.mark.parametrize("relative", NAMED)
def test_each_results_file_is_well_formed(relative):
    data = json.loads((ROOT / relative).read_text(encoding="utf-8"))
    assert data["command"] and (data["tables"] or data["summary"])
    for table in data["tables"]:
        assert table["title"] and all(len(row) == len(table["columns"]) for row in table["rows"])


def test_what_a_benchmark_writes_is_what_the_page_shows(tmp_path, monkeypatch):
    results, hooks = _module("benchmarks/json_results.py"), _module("docs/hooks.py")
    path = results.write_results("bench_x", command="python benchmarks/bench_x.py --quick", path=tmp_path / "x.json",
                                 summary={"speedup": 2.5, "gap": float("nan")},
                                 tables=[results.table("Speed | ratio", ["case", "|gap|", "r"],
                                                       [["a", 0.123456, 0.999931], ["b", None, 1.0]])])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["summary"] == {"speedup": 2.5, "gap": None} and data["machine"]["threads"] >= 1
    monkeypatch.setattr(hooks, "ROOT", tmp_path)
    page = hooks.results_markdown("x.json")
    assert page.startswith("Measured by `python benchmarks/bench_x.py --quick` (")
    assert "| case | \\|gap\\| | r |" in page
    assert "| a | 0.1235 | 0.999931 |" in page and "| b | – | 1 |" in page
    assert "speedup=2.5 gap=–" in page
    with pytest.raises(FileNotFoundError):
        hooks.results_markdown("missing.json")
