"""Attribution leaves every module exactly as it found it: instance attributes (another library's ``forward``
wrappers, e.g. accelerate's hooks, which every ``device_map=`` or offloaded model has), every hook dictionary
and the parameters' flags, after a normal exit and after an exception raised mid-run."""

from __future__ import annotations

import importlib

import pytest
import torch
from accelerate.hooks import ModelHook, add_hook_to_module
from torch.nn.modules import module as torch_module

from kneuron.attribution import find_knowledge_neurons, integrated_gradients
from kneuron.facts import encode
from kneuron.models import NeuronPatch, capture, patch
from tiny_models import FAMILIES, tiny_lm

PROMPTS = {"mlm": "The capital of France is [Y].", "causal": "The capital of France is"}
_GLOBAL_HOOKS = [name for name in dir(torch_module) if name.startswith("_global_") and name.endswith("hooks")]


class Counting(ModelHook):
    """An accelerate hook that counts the forwards it wraps."""

    def __init__(self, calls: dict, name: str):
        self.calls, self.name = calls, name

    def pre_forward(self, module, *args, **kwargs):
        self.calls[self.name] = self.calls.get(self.name, 0) + 1
        return args, kwargs


def snapshot(model: torch.nn.Module) -> dict:
    """Everything attribution could leave behind: each module's ``__dict__`` (keys and the identity of each
    value), the contents of every dict in it (the hook dicts: forward, pre-forward, backward, with-kwargs,
    always-called, state-dict hooks...), torch's global hooks, and each parameter's ``requires_grad``."""
    state: dict = {}
    for name, module in model.named_modules():
        state[name] = {key: id(value) for key, value in module.__dict__.items()}
        for key, value in module.__dict__.items():
            if isinstance(value, dict):
                state[f"{name}.{key}"] = {k: id(v) for k, v in value.items()}
    for name in _GLOBAL_HOOKS:
        state[f"torch.{name}"] = dict(getattr(torch_module, name))
    state["requires_grad"] = {name: p.requires_grad for name, p in model.named_parameters()}
    return state


def hooked(family: str) -> tuple:
    lm = tiny_lm(family, layers=4)
    calls: dict[str, int] = {}
    for name, module in lm.model.named_modules():
        add_hook_to_module(module, Counting(calls, name))
    return lm, calls


def assert_hooks_work(lm, calls: dict) -> None:
    """Every module's accelerate hook still runs: one forward calls each block once per depth it serves (once,
    but ALBERT's one layer at each of its depths)."""
    calls.clear()
    query = encode(lm, PROMPTS[lm.kind], "Paris")
    with torch.no_grad():
        lm.model(input_ids=query.input_ids[None])
    depths = {name: len(lm.sharing(i)) for name, module in lm.model.named_modules() for i in range(4)
              if module is lm.block(i)}
    assert all(calls.get(name) == n for name, n in depths.items()), {name: calls.get(name) for name in depths}


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_restores_accelerate_hooks_and_every_hook_dict(family):
    lm, calls = hooked(family)
    before = snapshot(lm.model)
    unhooked = tiny_lm(family, layers=4)
    query = encode(lm, PROMPTS[lm.kind], "Paris")
    # batches of 4 rows: each of the 4 layers is a batch of its own, so the batches start at blocks 3, 2, 1, 0
    scores = integrated_gradients(lm, query, steps=4, batch_rows=4)
    assert snapshot(lm.model) == before
    assert_hooks_work(lm, calls)
    # the no-op hooks change nothing in the result
    assert torch.allclose(scores.scores, integrated_gradients(unhooked, query, steps=4, batch_rows=4).scores,
                          rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_exception_mid_run_restores_everything(family, monkeypatch):
    lm, calls = hooked(family)
    before = snapshot(lm.model)
    rows = importlib.import_module("kneuron.attribution.step_rows")
    shared = importlib.import_module("kneuron.attribution.shared_depths")  # ALBERT's rows (full passes)
    real = rows.answer_token_log_probs
    seen = []

    def boom_in_the_second_batch(*args, **kwargs):  # the clean pass, one batch, then inside the next one
        seen.append(1)
        if len(seen) == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(rows, "answer_token_log_probs", boom_in_the_second_batch)
    monkeypatch.setattr(shared, "answer_token_log_probs", boom_in_the_second_batch)
    with pytest.raises(RuntimeError, match="boom"):
        integrated_gradients(lm, PROMPTS[lm.kind], "Paris", steps=4, batch_rows=4)
    assert len(seen) == 3
    assert snapshot(lm.model) == before
    assert_hooks_work(lm, calls)


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2", "albert"])
def test_hooks_and_patches_restore_everything(family):
    lm, calls = hooked(family)
    before = snapshot(lm.model)
    query = encode(lm, PROMPTS[lm.kind], "Paris")
    with capture(lm, positions=query.position, detach=False), \
            patch(lm, [NeuronPatch(1, 3, "scale", 2.0)], positions=query.position):
        lm.model(input_ids=query.input_ids[None])
    with pytest.raises(RuntimeError), patch(lm, [NeuronPatch(0, 1)]):
        raise RuntimeError("inside")
    find_knowledge_neurons(lm, [PROMPTS[lm.kind]], "Paris", steps=2)
    assert snapshot(lm.model) == before
    assert_hooks_work(lm, calls)
