"""A model split by accelerate's ``dispatch_model`` (some blocks offloaded, their parameters on ``meta`` between
passes) wraps with ``from_model`` and attributes exactly as the one-device model. On this CPU-only machine the
offload goes to disk, which takes the same hooks as a CPU offload next to a GPU (benchmarks/bench_device.py checks
that one on a device)."""

from __future__ import annotations

import copy

import torch
from accelerate import dispatch_model

from kneuron.attribution import GradientTimesActivation, IntegratedGradients
from kneuron.models import from_model
from tiny_models import tiny_lm

BAG = ["The capital of France is", "France's capital city is"]


def test_offloaded_blocks_attribute_exactly(tmp_path):
    lm = tiny_lm("llama", layers=4, dtype=torch.float64)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu",
                  "lm_head": "cpu"}
    model = dispatch_model(copy.deepcopy(lm.model), device_map=device_map, main_device="cpu", offload_dir=tmp_path)
    assert any(p.is_meta for p in model.parameters())  # the offloaded blocks hold no weights between passes
    split = from_model(model, lm.tokenizer)  # was: "Tensor.item() cannot be called on meta tensors"
    assert split.device == torch.device("cpu")
    for estimator in (IntegratedGradients(steps=4), GradientTimesActivation()):
        for a, b in zip(estimator.attribute(lm, BAG, "Paris"), estimator.attribute(split, BAG, "Paris"), strict=True):
            # float64: the one-device model's IG takes the fused output head, the offloaded one (its head wrapped by
            # accelerate's hooks) the model's own head, so the two agree to float64 rounding, not bit for bit
            assert torch.allclose(a.scores, b.scores, rtol=1e-9, atol=1e-12 * float(a.scores.abs().max())), \
                estimator.name
    assert all(p.is_meta for name, p in model.named_parameters() if ".layers.1." in name)  # still offloaded after
