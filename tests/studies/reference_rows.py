"""Fixed atlases and the rows every study stored on them, kept in ``tests/fixtures/study_rows.json``.

The fixture was written with the code paths of before the study registry (commit ``cd8ceb7``: ``kneuron study
all`` / ``beyond`` / ``estimators`` / ``languages`` and ``python -m kneuron.studies.editing``), so that
``test_rows_unchanged.py`` can check, row by row, that the registry's runner stores exactly what they stored.

The atlases are made from float64 tiny models (``tiny-llama``, ``tiny-bert``), so that the rows do not depend on the
CPU's float32 rounding: the test compares them within 1e-9 relative.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

import kneuron.models
from studies.conftest import multilingual_pool, tiny_facts
from tiny_models import tiny_lm

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "study_rows.json"
#: the atlases: name -> (family, facts)
ATLASES = {"llama": ("llama", tiny_facts), "bert": ("bert", tiny_facts), "languages": ("llama", multilingual_pool)}


def model(family: str):
    return tiny_lm(family, dtype=torch.float64)


@contextlib.contextmanager
def float64_models() -> Iterator[None]:
    """``--model tiny-<family>`` (and the atlas's own name) loads the float64 tiny model."""
    real = kneuron.models.load

    def load(name=None, *, device="cpu", **kwargs):
        if name and str(name).startswith("tiny-"):
            return model(str(name)[5:])
        return real(name, device=device, **kwargs)

    with mock.patch.object(kneuron.models, "load", load):
        yield


def build(folder: Path) -> dict[str, Path]:
    """The three atlases (3 IG steps, share 0.3, sparse scores, every fact kept), made in ``folder``."""
    from kneuron.store import run

    paths = {}
    for name, (family, facts) in ATLASES.items():
        paths[name] = folder / f"{name}.sqlite"
        run(model(family), facts(), paths[name], steps=3, known_only=False, progress=False, share=0.3)
    return paths


def stored(path: Path) -> dict[str, list[list]]:
    """Every study's rows in the atlas, in the order written: ``[variant, relation, fact_id, metric, value]``, NaN
    as None."""
    from kneuron.store import Atlas

    with Atlas.open(path, read_only=True) as atlas:
        return {study: [[r["variant"], r["relation"], r["fact_id"], r["metric"],
                         None if math.isnan(r["value"]) else r["value"]] for r in atlas.results(study)]
                for study in atlas.studies()}


def read_fixture() -> dict[str, dict[str, list[list]]]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def write_fixture(rows: dict[str, dict[str, list[list]]]) -> None:
    FIXTURE.write_text(json.dumps(rows, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
