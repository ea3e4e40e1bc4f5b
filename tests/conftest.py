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
from hypothesis import settings

import kneuron.models
from tiny_models import FAMILIES, tiny_lm

# property tests draw the same examples on every run: a failure is reproducible, never a matter of luck
settings.register_profile("kneuron", derandomize=True)
settings.load_profile("kneuron")

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


# ------------------------------------------------------------------------- real models (marked real_model)


def _embedded(name: str):
    """Load an embedded model once per session, or skip when its package is not installed."""
    from transformers.utils import logging as hf_logging

    from kneuron.errors import ModelLoadError
    from kneuron.models import load as load_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return load_model(name)  # from kneuron's safetensors cache after the first run (about 2 s)
    except ModelLoadError as exc:
        if "not installed" in str(exc):
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="session")
def smollm2_load():
    """``(SmolLM2-135M, converted)``: ``converted`` says whether this load de-quantized the GGUF file
    (no cached copy yet) rather than reading kneuron's cache."""
    from kneuron.models.loading import needs_conversion

    converted = needs_conversion("smollm2-135m")
    return _embedded("smollm2-135m"), converted


@pytest.fixture(scope="session")
def smollm2(smollm2_load):
    """The embedded SmolLM2-135M (``kneuron.load()``), loaded once per session; read-only, do not edit it."""
    return smollm2_load[0]


@pytest.fixture(scope="session")
def gemma3():
    """The embedded Gemma 3 270M, once per session; skips unless ``make gemma`` installed its package."""
    return _embedded("gemma3-270m")
