"""Checks a model passes before kneuron works on it: finite weights, a usable device, a prompt within the
model's positions, and a warning for float16 on a CPU."""

from __future__ import annotations

import warnings

import pytest
import torch

import kneuron
from kneuron.errors import FactError, KneuronError, ModelLoadError
from kneuron.facts import encode
from kneuron.models import from_model, loading
from tiny_models import FAMILIES, MLM_FAMILIES, POSITIONS, tiny_lm

# ------------------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_is_refused_by_from_model(bad):
    lm = tiny_lm("llama")
    with torch.no_grad():
        lm.model.model.layers[1].mlp.up_proj.weight[3, 5] = bad
        lm.model.model.layers[1].mlp.down_proj.weight[0, 0] = bad  # a later one: the first is named
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight holds 1 non-finite value")\
            as info:
        from_model(lm.model, lm.tokenizer)
    message = str(info.value)
    assert ("NaN" if bad != bad else "inf") in message
    assert "\n" not in message


def test_non_finite_weight_is_refused_by_load(tmp_path):
    lm = tiny_lm("gpt2")
    with torch.no_grad():
        lm.model.transformer.h[0].mlp.c_fc.weight[:2] = float("nan")  # Conv1D (in 16 x out 32): 2 rows of 32
    lm.model.save_pretrained(tmp_path / "nan")
    lm.tokenizer.save_pretrained(tmp_path / "nan")
    with pytest.raises(ModelLoadError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight holds 64 non-finite values"):
        kneuron.load(tmp_path / "nan")


def test_finite_values_whose_sum_overflows_pass():
    """The sum fast path must not refuse large finite weights whose float32 sum overflows to inf."""
    lm = tiny_lm("llama")
    with torch.no_grad():
        lm.model.model.layers[0].mlp.up_proj.weight.fill_(3e38)
    assert torch.isinf(lm.model.model.layers[0].mlp.up_proj.weight.sum())
    from_model(lm.model, lm.tokenizer)  # no error


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_weight_in_other_dtypes(dtype):
    lm = tiny_lm("gpt2")
    lm.model.to(dtype)
    with torch.no_grad():
        lm.model.lm_head.weight[4, 2] = float("nan")  # tied to the input embedding
    with pytest.raises(ModelLoadError, match=r"transformer\.wte\.weight holds 1 non-finite value \(NaN\)"):
        from_model(lm.model, lm.tokenizer)


def test_finite_models_pass(family):
    lm = tiny_lm(family)
    from_model(lm.model, lm.tokenizer)  # no error


# ---------------------------------------------------------------------------------------------- devices


@pytest.fixture
def saved(tmp_path):
    lm = tiny_lm("llama")
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.mark.parametrize("device, match", [
    ("gpu", r"'gpu' is not a torch device.*cpu, cuda, cuda:1, mps"),
    ("cuda:x", r"'cuda:x' is not a torch device"),
    ("", r"'' is not a torch device"),
])
def test_unknown_device_name(saved, device, match):
    with pytest.raises(ModelLoadError, match=match):
        kneuron.load(saved, device=device)


def test_cuda_without_cuda(saved, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"--device 'cuda': CUDA is not available.*--device cpu"):
        kneuron.load(saved, device="cuda")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        loading.check_device(torch.device("cuda", 0))


def test_cuda_index_past_the_devices(saved, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ModelLoadError, match=r"'cuda:7'.*1 CUDA device \(cuda:0\)"):
        kneuron.load(saved, device="cuda:7")


def test_mps_without_mps(saved, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="'mps'.*MPS .*not available"):
        kneuron.load(saved, device="mps")


def test_cpu_devices_pass(saved):
    assert loading.check_device("cpu") == torch.device("cpu")
    assert loading.check_device(torch.device("cpu")) == torch.device("cpu")
    assert kneuron.load(saved, device="cpu").device == torch.device("cpu")


# --------------------------------------------------------------------------------------- position limit


#: families whose positions are not embedded (BLOOM's ALiBi biases attention by distance): no limit
UNLIMITED = ("bloom",)
LIMITED = tuple(family for family in FAMILIES if family not in UNLIMITED)


@pytest.mark.parametrize("family", LIMITED)
def test_max_positions_comes_from_the_config(family):
    lm = tiny_lm(family)
    # tiny_models configures 64 positions (RoBERTa 66, of which pad_token_id + 1 = 1 go unused)
    assert lm.max_positions == (POSITIONS + 1 if family == "roberta" else POSITIONS)


@pytest.mark.parametrize("family", UNLIMITED)
def test_alibi_models_have_no_position_limit(family):
    lm = tiny_lm(family)
    assert lm.max_positions is None
    lm.check_length(10**6)
    ids = torch.full((1, 4 * POSITIONS), len(lm.tokenizer) - 1)
    with torch.no_grad():
        assert torch.isfinite(lm.model(input_ids=ids).logits).all()


@pytest.mark.parametrize("family", LIMITED)
def test_max_positions_is_exact(family):
    """A prompt of exactly max_positions tokens runs; where positions are learned, one more crashes."""
    lm = tiny_lm(family)
    n = lm.max_positions
    lm.check_length(n)
    ids = torch.full((1, n), len(lm.tokenizer) - 1)
    with torch.no_grad():
        assert torch.isfinite(lm.model(input_ids=ids).logits).all()
    if family in ("bert", "roberta", "distilbert", "electra", "gpt2", "gpt_neo", "opt"):
        with torch.no_grad(), pytest.raises((IndexError, RuntimeError)):
            lm.model(input_ids=torch.full((1, n + 1), len(lm.tokenizer) - 1))


@pytest.mark.parametrize("family", LIMITED)
def test_check_length_refuses_a_longer_prompt(family):
    lm = tiny_lm(family)
    n = lm.max_positions
    lm.check_length(n)
    with pytest.raises(FactError, match=rf"The prompt is {n + 3} tokens long.*at most {n} positions.*by 3 tokens")\
            as info:
        lm.check_length(n + 3)
    assert "\n" not in str(info.value)


def test_no_position_limit(monkeypatch):
    lm = tiny_lm("llama")
    for field in ("max_position_embeddings", "n_positions"):
        monkeypatch.delattr(type(lm.model.config), field, raising=False)
        lm.model.config.__dict__.pop(field, None)
    assert lm.max_positions is None
    lm.check_length(10**6)  # no limit to check


@pytest.mark.parametrize("family", ["gpt2", "bert", "opt", "llama"])
def test_encode_refuses_a_prompt_past_the_limit(family):
    lm = tiny_lm(family)
    words = " ".join(["Paris"] * 70)
    prompt = f"{words} is the capital of [Y]." if family in MLM_FAMILIES else f"{words} is the capital of"
    with pytest.raises(FactError, match="tokens long"):
        encode(lm, prompt, "France")
    short = "The capital of France is [Y]." if family in MLM_FAMILIES else "The capital of France is"
    assert len(encode(lm, short, "Paris")) < 64


# ---------------------------------------------------------------------------------------- float16 on CPU


def test_float16_on_cpu_warns():
    lm = tiny_lm("llama")
    lm.model.half()
    with pytest.warns(UserWarning, match=r"float16 on the CPU.*slower than float32.*load it in float32"):
        from_model(lm.model, lm.tokenizer)


def test_float16_from_load_warns(saved):
    with pytest.warns(UserWarning, match="float16 on the CPU"):
        lm = kneuron.load(saved, dtype=torch.float16)
    assert lm.dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_other_dtypes_do_not_warn(dtype):
    lm = tiny_lm("llama", dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_model(lm.model, lm.tokenizer)


def test_errors_are_kneuron_errors():
    assert issubclass(ModelLoadError, KneuronError) and issubclass(FactError, KneuronError)
    assert set(FAMILIES)  # every family is covered by the parametrized tests above
