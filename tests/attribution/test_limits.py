"""Steps, batch rows and the memory budget: bad values are one clear KneuronError, before any work."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kneuron.attribution import integrated_gradients
from kneuron.attribution.limits import DEFAULT_MEMORY_BUDGET, memory_budget, parse_size
from kneuron.attribution.step_rows import make_plan, memory_per_row
from kneuron.errors import KneuronError
from kneuron.facts import encode
from tiny_models import tiny_lm

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("gpt2", dtype=torch.float64)


@pytest.mark.parametrize("steps", [2.5, 3.0, True, np.float64(3.0), np.float32(2.5), "4", torch.tensor(2.5), 0, -3])
def test_steps_must_be_a_whole_number_of_at_least_one(lm, steps):
    with pytest.raises(KneuronError, match="steps"):
        integrated_gradients(lm, PROMPT, "Paris", steps=steps)


def test_integer_like_steps_are_accepted(lm):
    plain = integrated_gradients(lm, PROMPT, "Paris", steps=3)
    for other in (np.int64(3), torch.tensor(3)):
        assert torch.equal(integrated_gradients(lm, PROMPT, "Paris", steps=other).scores, plain.scores)


@pytest.mark.parametrize("rows", [0, -1, 2.5, 2.0, True, np.float64(4.0), "8"])
def test_batch_rows_must_be_a_whole_number_of_at_least_one(lm, rows):
    with pytest.raises(KneuronError, match="batch_rows"):
        integrated_gradients(lm, PROMPT, "Paris", steps=3, batch_rows=rows)


def test_a_billion_steps_is_refused_before_allocating(lm):
    start = time.perf_counter()
    with pytest.raises(KneuronError, match=r"steps=1,000,000,000 .* needs about .* memory budget of 2\.0 GiB"):
        integrated_gradients(lm, PROMPT, "Paris", steps=10**9)
    assert time.perf_counter() - start < 5  # refused up front, not after building a billion rows


def test_a_row_larger_than_the_budget_is_refused(lm):
    plan = make_plan(lm, encode(lm, PROMPT, "Paris"), "prob")
    per_row = memory_per_row(lm, plan)
    with pytest.raises(KneuronError, match="One attribution row .* memory budget"):
        integrated_gradients(lm, PROMPT, "Paris", steps=3, memory_budget=int(per_row) - 1)
    integrated_gradients(lm, PROMPT, "Paris", steps=3, memory_budget=int(per_row) + 1)  # one row per batch


@pytest.mark.parametrize(("text", "size"), [
    ("2GB", 2 * 10**9), ("2GiB", 2 * 2**30), ("2G", 2 * 2**30), ("512MB", 512 * 10**6), ("512MiB", 512 * 2**20),
    ("1.5G", 3 * 2**29), ("1.5 gib", 3 * 2**29), ("2147483648", 2**31), ("64kb", 64_000), ("100B", 100),
    (" 3 TiB ", 3 * 2**40), ("2e9", 2 * 10**9),
])
def test_sizes_with_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", " ", "lots", "2 GBs", "-1GB", "0", "0.1", "GB", "1,000", "nan", "inf"])
def test_bad_sizes_say_what_is_accepted(text):
    with pytest.raises(KneuronError, match="2GiB"):
        parse_size(text)


def test_budget_from_the_environment(monkeypatch, lm):
    monkeypatch.delenv("KNEURON_MEMORY_BUDGET", raising=False)
    assert memory_budget() == DEFAULT_MEMORY_BUDGET
    monkeypatch.setenv("KNEURON_MEMORY_BUDGET", "2GB")
    assert memory_budget() == 2 * 10**9
    reference = integrated_gradients(lm, PROMPT, "Paris", steps=3, memory_budget=2 * 10**9)
    assert torch.equal(integrated_gradients(lm, PROMPT, "Paris", steps=3).scores, reference.scores)
    for bad in ("", "two gigabytes"):
        monkeypatch.setenv("KNEURON_MEMORY_BUDGET", bad)
        with pytest.raises(KneuronError, match="KNEURON_MEMORY_BUDGET .* use plain bytes"):
            integrated_gradients(lm, PROMPT, "Paris", steps=3)


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "none"])
def test_bad_budget_argument(lm, value):
    with pytest.raises(KneuronError, match="memory_budget"):
        integrated_gradients(lm, PROMPT, "Paris", steps=3, memory_budget=value)


def test_budget_argument_with_units(lm):
    reference = integrated_gradients(lm, PROMPT, "Paris", steps=3)
    assert torch.equal(integrated_gradients(lm, PROMPT, "Paris", steps=3, memory_budget="1GiB").scores,
                       reference.scores)
