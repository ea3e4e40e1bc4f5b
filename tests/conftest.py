"""Shared fixtures. ``tests/`` is on ``sys.path`` (this file lives there), so tests can
``from tiny_models import tiny_lm, FAMILIES``.

Fixtures:
    family: parametrized over every registered family (see ``tiny_models.FAMILIES``).
    lm: a fresh float32 tiny model of ``family``.
    lm64: a fresh float64 tiny model of ``family`` (for exactness checks).
    make_lm: the ``tiny_models.tiny_lm`` factory itself, for other seeds, sizes or dtypes.

Tests run torch on one thread: the tiny models' ops are far too small to gain from more, and on a
loaded machine intra-op threads spin-wait for each other (a 2-layer forward measured 0.24 s on two
threads against 0.001 s on one). A test of a real model may raise it with ``torch.set_num_threads``.
"""

from __future__ import annotations

import pytest
import torch

import kneuron.models
from tiny_models import FAMILIES, tiny_lm

torch.set_num_threads(1)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def lm(family):
    return tiny_lm(family)


@pytest.fixture
def lm64(family):
    return tiny_lm(family, dtype=torch.float64)


@pytest.fixture
def make_lm():
    return tiny_lm


@pytest.fixture
def fake_load(monkeypatch):
    """Make ``--model tiny-<family>`` load a tiny model; returns the dict of models handed out."""
    handed: dict[str, object] = {}

    def load(model=None, *, device="cpu", **kwargs):
        if model and str(model).startswith("tiny-"):
            handed[model] = lm = tiny_lm(str(model)[5:])
            return lm
        return real(model, device=device, **kwargs)

    real = kneuron.models.load
    monkeypatch.setattr(kneuron.models, "load", load)
    return handed
