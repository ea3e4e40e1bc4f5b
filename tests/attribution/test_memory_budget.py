"""The default IG batch budget: KNEURON_MEMORY_BUDGET, else a share of a CUDA device's free memory, else 2 GiB.

No GPU here: ``torch.cuda.mem_get_info`` is replaced, so this checks the rule, not a device."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from kneuron.attribution.integrated_gradients import CUDA_MEMORY_SHARE, default_memory_budget
from kneuron.attribution.limits import DEFAULT_MEMORY_BUDGET
from kneuron.errors import InputError


def test_budget_rule(monkeypatch):
    monkeypatch.delenv("KNEURON_MEMORY_BUDGET", raising=False)
    asked = []

    def free_memory(device):
        asked.append(device)
        return 10 * 1024**3, 16 * 1024**3

    monkeypatch.setattr(torch.cuda, "mem_get_info", free_memory)
    cuda = SimpleNamespace(device=torch.device("cuda:1"))
    assert default_memory_budget(cuda) == int(10 * 1024**3 * CUDA_MEMORY_SHARE)
    assert asked == [torch.device("cuda:1")]
    assert default_memory_budget(SimpleNamespace(device=torch.device("cpu"))) == DEFAULT_MEMORY_BUDGET
    monkeypatch.setenv("KNEURON_MEMORY_BUDGET", "12345")
    assert default_memory_budget(cuda) == 12345 and len(asked) == 1


def test_rows_per_batch_follow_free_cuda_memory(monkeypatch):
    """The arithmetic of default_memory_budget's docstring: 50 GiB free is a 30 GiB budget, and rows of 40 MiB go 768
    to a batch; with 5 GiB free, 76; with less free memory than one row needs, a one-line refusal."""
    module = importlib.import_module("kneuron.attribution.integrated_gradients")  # (the package's name is the function)
    monkeypatch.delenv("KNEURON_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(module, "memory_per_row", lambda lm, plan: 40 * 1024**2)
    cuda = SimpleNamespace(device=torch.device("cuda:0"))
    for free, rows in ((50 * 1024**3, 768), (5 * 1024**3, 76)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 80 * 1024**3))
        budget = default_memory_budget(cuda)
        assert budget == int(free * CUDA_MEMORY_SHARE)
        assert module.rows_per_batch(cuda, None, budget, None) == rows
        assert module.rows_per_batch(cuda, None, budget, 100) == min(rows, 100)  # batch_rows caps it
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (50 * 1024**2, 80 * 1024**3))
    with pytest.raises(InputError, match="One attribution row of this prompt needs about 40.0 MiB, more than the "
                                         "memory budget of 30.0 MiB"):
        module.rows_per_batch(cuda, None, default_memory_budget(cuda), None)
