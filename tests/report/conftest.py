"""Shared fixtures of the report tests."""

from __future__ import annotations

import pytest

from kneuron.store import run
from studies.conftest import tiny_facts
from tiny_models import tiny_lm


@pytest.fixture
def atlas_path(tmp_path):
    """A sparse atlas of the tiny facts on the tiny Llama (3 steps, share 0.3)."""
    path = tmp_path / "tiny.sqlite"
    run(tiny_lm("llama"), tiny_facts(), path, steps=3, known_only=False, progress=False, share=0.3)
    return path
