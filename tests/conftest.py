"""Shared fixtures. ``tests/`` is on ``sys.path`` (this file lives there), so tests can
``from tiny_models import tiny_lm, FAMILIES``.

Fixtures:
    family: parametrized over every registered family (see ``tiny_models.FAMILIES``).
    lm: a fresh float32 tiny model of ``family``.
    lm64: a fresh float64 tiny model of ``family`` (for exactness checks).
    make_lm: the ``tiny_models.tiny_lm`` factory itself, for other seeds, sizes or dtypes.
"""

from __future__ import annotations

import pytest
import torch

from tiny_models import FAMILIES, tiny_lm


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
