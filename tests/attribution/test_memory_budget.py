"""The default IG batch budget: KNEURON_MEMORY_BUDGET, else a share of a CUDA device's free memory, else 2 GiB.

No GPU here: ``torch.cuda.mem_get_info`` is replaced, so this checks the rule, not a device."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kneuron.attribution.integrated_gradients import CUDA_MEMORY_SHARE, default_memory_budget
from kneuron.attribution.limits import DEFAULT_MEMORY_BUDGET


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
