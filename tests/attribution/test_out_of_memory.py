"""Running out of memory is one OutOfMemory line (what was tried, its estimate, the allocator's words, the settings
to lower), from every estimator's batches and through a run; other errors pass unchanged; the model is restored.

No GPU here: the batch functions are replaced by ones that raise what torch raises (``torch.OutOfMemoryError`` on
CUDA, a RuntimeError from the CPU allocator)."""

from __future__ import annotations

import importlib

import pytest
import torch

from kneuron.attribution import GradientTimesActivation, IntegratedGradients, LogProbIncrease
from kneuron.attribution.limits import is_out_of_memory, out_of_memory_as_error
from kneuron.attribution.two_stage import TwoStageIntegratedGradients
from kneuron.errors import KneuronError, OutOfMemory
from kneuron.store import run
from store.helpers import tiny_facts
from tiny_models import tiny_lm

CUDA_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
                "1.06 GiB is free. Of the allocated memory 75.2 GiB is allocated by PyTorch,\nand 1.3 GiB is "
                "reserved. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF")
CPU_MESSAGE = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
               "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")
# the modules (kneuron.attribution's names of the same spelling are its functions)
ig_module = importlib.import_module("kneuron.attribution.integrated_gradients")
gxa_module = importlib.import_module("kneuron.attribution.gradient_times_activation")
lpi_module = importlib.import_module("kneuron.attribution.log_prob_increase")
two_stage_module = importlib.import_module("kneuron.attribution.two_stage")
PROMPTS = ["The capital of France is", "France's capital city is"]


def raising(error: BaseException):
    def fail(*_args, **_kwargs):
        raise error
    return fail


def cuda_oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(CUDA_MESSAGE)


def assert_one_line(error: OutOfMemory, *settings: str) -> str:
    message = str(error)
    assert "\n" not in message and message.startswith("Out of memory on cpu while ")
    for setting in settings:
        assert setting in message
    assert error.__cause__ is None and error.__suppress_context__  # no traceback of the failed allocation
    return message


def test_what_counts_as_out_of_memory():
    assert is_out_of_memory(cuda_oom())
    assert is_out_of_memory(RuntimeError(CPU_MESSAGE))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert not is_out_of_memory(ValueError("DefaultCPUAllocator"))  # only a RuntimeError from the allocator


def test_the_guard_says_what_was_tried_and_what_it_needs():
    with pytest.raises(OutOfMemory) as caught, out_of_memory_as_error("cuda:0", "doing X", needs=3 * 2**30,
                                                                     budget=2**31, lower="knob"):
        raise cuda_oom()
    assert str(caught.value) == ("Out of memory on cuda:0 while doing X (estimated 3.0 GiB of a memory budget of "
                                 "2.0 GiB): CUDA out of memory. Tried to allocate 2.00 GiB. Lower knob.")
    assert isinstance(caught.value, KneuronError)
    with pytest.raises(RuntimeError, match="shapes cannot"), out_of_memory_as_error("cpu", "doing X"):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")  # not memory: unchanged
    guard = out_of_memory_as_error("cpu", "doing X")
    with pytest.raises(OutOfMemory, match="while doing X: MemoryError. Lower"), guard:
        raise MemoryError()  # Python's own, e.g. from a huge list: no message of its own
    expected = r"doing X: \[enforce fail at alloc_cpu.cpp:117\] data. DefaultCPUAllocator: can't allocate memory"
    with pytest.raises(OutOfMemory, match=expected), out_of_memory_as_error("cpu", "doing X"):
        raise RuntimeError(CPU_MESSAGE)


@pytest.mark.parametrize("error", [cuda_oom(), RuntimeError(CPU_MESSAGE)], ids=["cuda", "cpu"])
def test_integrated_gradients_batches(monkeypatch, error):
    lm = tiny_lm("llama")
    monkeypatch.setattr(ig_module, "run_rows", raising(error))
    with pytest.raises(OutOfMemory) as caught:
        IntegratedGradients(steps=4, memory_budget="64MiB", batch_rows=5).attribute(lm, PROMPTS, "Paris")
    message = assert_one_line(caught.value, "memory_budget", "KNEURON_MEMORY_BUDGET", "batch_rows", "--chunk-facts")
    assert "by integrated gradients in batches of 5 rows (estimated " in message
    assert "of a memory budget of 64.0 MiB)" in message
    # hooks gone, gradients flags back: the model is as it was
    assert all(p.requires_grad for p in lm.model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_the_clean_passes(monkeypatch):
    lm = tiny_lm("gpt2")
    monkeypatch.setattr(ig_module, "make_plan", raising(cuda_oom()))
    with pytest.raises(OutOfMemory) as caught:
        IntegratedGradients(steps=4).attribute(lm, PROMPTS, "Paris")
    assert "while running the clean passes of 2 prompt(s)" in assert_one_line(caught.value, "--chunk-facts")


def test_shared_layers_and_two_stage(monkeypatch):
    monkeypatch.setattr(ig_module, "run_shared_rows", raising(cuda_oom()))
    with pytest.raises(OutOfMemory, match="by integrated gradients in batches"):
        IntegratedGradients(steps=4).attribute(tiny_lm("albert"), "The capital of France is [Y].", "Paris")
    monkeypatch.setattr(two_stage_module, "run_rows", raising(cuda_oom()))
    with pytest.raises(OutOfMemory) as caught:
        TwoStageIntegratedGradients(steps=8).attribute(tiny_lm("llama"), PROMPTS, "Paris")
    assert "by two-stage integrated gradients in batches" in assert_one_line(caught.value, "batch_rows")


def test_gradient_times_activation_and_log_prob_increase(monkeypatch):
    lm = tiny_lm("llama")
    monkeypatch.setattr(gxa_module, "_one_batch", raising(RuntimeError(CPU_MESSAGE)))
    with pytest.raises(OutOfMemory) as caught:
        GradientTimesActivation().attribute(lm, PROMPTS, "Paris")
    assert "a batch of 2 prompt(s)" in assert_one_line(caught.value, "batch_tokens", "--chunk-facts")
    monkeypatch.setattr(lpi_module, "_score_layers", raising(cuda_oom()))
    with pytest.raises(OutOfMemory) as caught:
        LogProbIncrease(memory_budget="1MiB").attribute(lm, PROMPTS, "Paris")
    assert "by log-probability increase" in assert_one_line(caught.value, "memory_budget", "--chunk-facts")


def test_a_run_stops_with_the_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(ig_module, "run_rows", raising(cuda_oom()))
    with pytest.raises(OutOfMemory, match="Lower memory_budget"):
        run(tiny_lm("llama"), tiny_facts()[:2], tmp_path / "atlas.sqlite", steps=3, known_only=False, progress=False)
