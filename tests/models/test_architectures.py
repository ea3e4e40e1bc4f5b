"""The architecture registry: detection, value slots, clear errors, and user-registered families."""

from __future__ import annotations

import functools
import textwrap
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
)

from kneuron.errors import KneuronError, UnsupportedArchitectureError
from kneuron.models import (
    ArchSpec,
    LanguageModel,
    NeuronPatch,
    architectures,
    capture,
    families,
    from_model,
    patch,
    spec_for,
)
from kneuron.models.architectures import MIXTURE_OF_EXPERTS, register
from tiny_models import FAMILIES, MLM_FAMILIES, MODEL_TYPES, config_kwargs, tiny_lm, tiny_tokenizer


@functools.cache
def _lm64(family: str) -> LanguageModel:
    """A float64 tiny model per family, for the tests that do not change weights."""
    return tiny_lm(family, dtype=torch.float64)


def _ids(lm, rows: int = 2, seq: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(len(lm.tokenizer.all_special_ids), len(lm.tokenizer), (rows, seq), generator=generator)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that registrations made by a test do not leak."""
    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    return architectures._REGISTRY


# --------------------------------------------------------------------------------------------- detection


def test_registry_has_every_listed_family():
    names = [spec.family for spec in families()]
    assert len(names) == len(set(names)) >= 20
    assert set(FAMILIES) <= set(names)


def test_detected_from_model_type(family):
    lm = _lm64(family)
    assert lm.model.config.model_type == MODEL_TYPES[family]
    assert spec_for(lm.model.config.model_type) is lm.spec
    assert lm.spec.family == family
    assert lm.kind == ("mlm" if family in MLM_FAMILIES else "causal")
    is_masked = type(lm.model).__name__.endswith("ForMaskedLM")
    assert is_masked == (lm.kind == "mlm")
    assert lm.spec.layout == ("conv1d" if family == "gpt2" else "linear")


def test_n_neurons_is_the_ffn_width(family):
    lm = tiny_lm(family, layers=3, neurons=40)
    assert (lm.n_layers, lm.n_neurons) == (3, 40)
    for layer in range(lm.n_layers):
        weight = lm.ffn_out(layer).weight
        assert 40 in weight.shape and 16 in weight.shape
    assert "layers=3, neurons=40" in repr(lm)


def test_alias_model_types_share_a_spec():
    assert spec_for("smollm3") is spec_for("llama")
    assert spec_for("xlm-roberta") is spec_for("roberta")
    assert spec_for("gemma3") is spec_for("gemma3_text")
    assert spec_for("olmo2") is not spec_for("olmo")  # OLMo 2 normalises its FFN output, OLMo does not


@pytest.mark.parametrize("model_type, family", [("xlm-roberta", "roberta"), ("camembert", "roberta"),
                                                ("smollm3", "llama")])
def test_alias_model_types_build_and_hook(model_type, family):
    """The registry's extra model types resolve on real modules of those types, not just by name."""
    kind = "mlm" if family in MLM_FAMILIES else "causal"
    vocab = len(tiny_tokenizer(kind))
    config = AutoConfig.for_model(model_type, vocab_size=vocab, pad_token_id=0, **config_kwargs(family, 2, 24))
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    torch.manual_seed(0)
    lm = from_model(auto.from_config(config, attn_implementation="eager"), tiny_tokenizer(kind))
    assert lm.model.config.model_type == model_type
    assert (lm.spec.family, lm.n_layers, lm.n_neurons) == (family, 2, 24)
    outputs = {}
    handle = lm.ffn_out(1).register_forward_hook(lambda _m, _a, out: outputs.__setitem__(1, out.detach().clone()))
    try:
        with torch.no_grad(), capture(lm, layers=[1]) as acts:
            lm.model(input_ids=_ids(lm))
    finally:
        handle.remove()
    with torch.no_grad():
        assert torch.equal(lm.ffn_out(1)(acts[1]), outputs[1])


def test_bloom_built_slow_but_exact_is_refused_in_one_line():
    """With slow_but_exact and pretraining_tp > 1 BLOOM's MLP multiplies dense_4h_to_h's weight slices itself: no
    hook would see the neurons."""
    lm = tiny_lm("bloom")
    for module in lm.model.modules():
        if hasattr(module, "slow_but_exact"):
            module.slow_but_exact, module.pretraining_tp = True, 2
    with pytest.raises(UnsupportedArchitectureError, match=r"slow_but_exact=True.*slow_but_exact=False") as info:
        from_model(lm.model, lm.tokenizer)
    assert "\n" not in str(info.value)
    assert from_model(tiny_lm("bloom", slow_but_exact=True).model, lm.tokenizer).spec.family == "bloom"  # tp 1


def test_bloom_alibi_rows_are_repeated_for_each_batch_row():
    """The attribution engine calls the model on one row and feeds many rows in at the blocks; BLOOM's ALiBi input
    is laid out (batch · heads, 1, keys), so the engine repeats it (ArchSpec.batch_head_inputs)."""
    from kneuron.models.partial_forward import batch_head_inputs_for_rows, start_at_layer

    lm = tiny_lm("bloom", dtype=torch.float64)
    assert lm.spec.batch_head_inputs == ("alibi",)
    ids = _ids(lm, rows=3)
    inputs = {}
    handle = lm.block(0).register_forward_pre_hook(lambda _m, args: inputs.__setitem__(0, args[0]))
    try:
        with torch.no_grad():
            batched = lm.model(input_ids=ids).logits
    finally:
        handle.remove()
    with torch.no_grad(), start_at_layer(lm, 0, inputs[0]):
        with pytest.raises(RuntimeError):  # one row's ALiBi for three rows
            lm.model(input_ids=ids[:1])
        with batch_head_inputs_for_rows(lm, 0):
            fed = lm.model(input_ids=ids[:1]).logits
    assert fed.shape == batched.shape and torch.allclose(fed, batched, atol=1e-12)


def test_modernbert_local_layers_attend_within_their_window():
    """Layer 1 of the tiny ModernBERT is local (a window of 4 tokens each side): a token 6 positions away does not
    reach it, so widening the window changes the outputs."""
    local = tiny_lm("modernbert", dtype=torch.float64)
    assert local.model.config.layer_types == ["full_attention", "sliding_attention"]
    wide = tiny_lm("modernbert", dtype=torch.float64, local_attention=64)
    ids = _ids(local, rows=1, seq=12)
    with torch.no_grad():
        assert not torch.allclose(local.model(input_ids=ids).logits, wide.model(input_ids=ids).logits)


def test_modernbert_sparse_prediction_does_not_change_attribution():
    """sparse_prediction drops unlabelled positions only when labels are given; kneuron passes none."""
    from kneuron.attribution import integrated_gradients

    prompt = "The capital of France is [Y]."
    plain = integrated_gradients(tiny_lm("modernbert", dtype=torch.float64), prompt, "Paris", steps=3)
    sparse = integrated_gradients(tiny_lm("modernbert", dtype=torch.float64, sparse_prediction=True), prompt,
                                  "Paris", steps=3)
    assert torch.equal(plain.scores, sparse.scores)


def test_backbone_without_lm_head_resolves_too():
    """Specs list the bare-model block path as a fallback (``BertModel``: ``encoder.layer``)."""
    lm = tiny_lm("bert")
    backbone = from_model(lm.model.bert, lm.tokenizer)
    assert backbone.n_layers == 2 and backbone.ffn_out(1) is lm.ffn_out(1)


def test_gemma3_multimodal_model_uses_its_language_model_layers():
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, vocab_size=len(tiny_tokenizer("causal")), max_position_embeddings=64,
                sliding_window=8)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=3, boi_token_index=2, eoi_token_index=3)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    lm = from_model(model, tiny_tokenizer("causal"))
    assert lm.spec.family == "gemma3"
    assert lm.ffn_out(1) is model.model.language_model.layers[1].mlp.down_proj
    ids = _ids(lm)
    with torch.no_grad(), capture(lm) as acts:
        clean = lm.model(input_ids=ids).logits
    assert acts[0].shape == (2, 6, 32)
    with torch.no_grad(), patch(lm, [NeuronPatch(0, 3, "set", 4.0)]):
        assert not torch.equal(lm.model(input_ids=ids).logits, clean)


# ------------------------------------------------------------------------------------------- value slots


def test_value_slot_layout(family):
    lm = _lm64(family)
    for layer in range(lm.n_layers):
        weight = lm.ffn_out(layer).weight
        for neuron in (0, 7, lm.n_neurons - 1):
            slot = lm.value_slot(layer, neuron)
            expected = weight[neuron, :] if family == "gpt2" else weight[:, neuron]
            assert torch.equal(slot, expected)
            assert slot.shape == (16,)  # hidden size: what the neuron writes into the residual stream
            assert slot.data_ptr() == expected.data_ptr()  # a view, not a copy


def test_ffn_output_is_the_sum_of_value_slots(family):
    """The FFN output projection writes sum_i act_i * value_slot(i) + bias: the neurons' "writing"."""
    lm = _lm64(family)
    ids = _ids(lm)
    outputs = []  # every call's output (ALBERT's one layer runs at each depth: depth 1 is its call number 1)
    handle = lm.ffn_out(1).register_forward_hook(lambda _m, _a, out: outputs.append(out.detach().clone()))
    try:
        with torch.no_grad(), capture(lm, layers=[1]) as acts:
            lm.model(input_ids=ids)
    finally:
        handle.remove()
    outputs = {1: outputs[lm.occurrence(1)]}
    slots = torch.stack([lm.value_slot(1, i) for i in range(lm.n_neurons)])  # (n_neurons, hidden)
    bias = lm.ffn_out(1).bias
    written = torch.einsum("btn,nh->bth", acts[1], slots) + (0 if bias is None else bias)
    torch.testing.assert_close(written, outputs[1].view_as(written), rtol=1e-12, atol=1e-12)


def test_zeroing_a_value_slot_silences_its_neuron(family):
    """Writes through the value-slot view reach the model, and the hook's neuron i is the slot's neuron i."""
    lm = tiny_lm(family, dtype=torch.float64)
    ids = _ids(lm)
    with torch.no_grad():
        lm.value_slot(0, 11).zero_()
        before = lm.model(input_ids=ids).logits
        with patch(lm, [NeuronPatch(0, 11, "set", 50.0)]):
            silenced = lm.model(input_ids=ids).logits
        with patch(lm, [NeuronPatch(0, 12, "set", 50.0)]):
            other = lm.model(input_ids=ids).logits
    assert torch.equal(silenced, before)
    assert not torch.equal(other, before)


# ---------------------------------------------------------------------------------------- clear errors


def _assert_helpful(message: str) -> None:
    for family in FAMILIES:
        assert MODEL_TYPES[family] in message, family
    assert "register(ArchSpec(" in message
    assert "from kneuron.models.architectures import ArchSpec, register" in message
    assert "arch='your_package.your_module:YOUR_SPEC'" in message


def test_unknown_model_type():
    with pytest.raises(UnsupportedArchitectureError, match="No architecture spec for model_type 'mamba2'") as info:
        spec_for("mamba2")
    _assert_helpful(str(info.value))
    assert isinstance(info.value, KneuronError)


@pytest.mark.parametrize("model_type", sorted(MIXTURE_OF_EXPERTS))
def test_mixture_of_experts_model_type(model_type):
    with pytest.raises(UnsupportedArchitectureError, match="mixture-of-experts") as info:
        spec_for(model_type)
    _assert_helpful(str(info.value))


def test_mixture_of_experts_model_is_refused():
    config = AutoConfig.for_model("mixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=64, num_local_experts=2)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match="'mixtral' is a mixture-of-experts model"):
        from_model(model, tiny_tokenizer("causal"))


def test_model_without_config_is_unknown():
    with pytest.raises(UnsupportedArchitectureError, match="No architecture spec for model_type ''"):
        from_model(nn.Linear(2, 2), tiny_tokenizer("causal"))


def test_spec_whose_paths_do_not_exist():
    bert = tiny_lm("bert")
    with pytest.raises(UnsupportedArchitectureError, match="none of the block lists"):
        from_model(bert.model, bert.tokenizer, arch=spec_for("llama"))
    wrong_ffn = ArchSpec("bert_wrong", ("bert",), "mlm", ("bert.encoder.layer",), "output.nothing_here")
    with pytest.raises(UnsupportedArchitectureError, match="no module 'output.nothing_here'"):
        from_model(bert.model, bert.tokenizer, arch=wrong_ffn)
    wrong_in = ArchSpec("bert_wrong", ("bert",), "mlm", ("bert.encoder.layer",), "output.dense", ffn_in="middle")
    with pytest.raises(UnsupportedArchitectureError, match=r"no module 'middle' \(the 'bert_wrong' spec's FFN input"):
        from_model(bert.model, bert.tokenizer, arch=wrong_in)


# ------------------------------------------------------------------------------------ custom families


class _ToyBlock(nn.Module):
    def __init__(self, hidden: int, neurons: int):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(hidden, neurons), nn.GELU(), nn.Linear(neurons, hidden)

    def forward(self, h):
        return h + self.down(self.act(self.up(h)))


class _Toy(nn.Module):
    """A model transformers does not know: an embedding, two MLP blocks, a head."""

    def __init__(self, vocab: int, hidden: int = 8, neurons: int = 12):
        super().__init__()
        self.config = SimpleNamespace(model_type="toy_mlp")
        self.embed = nn.Embedding(vocab, hidden)
        self.stack = nn.ModuleList([_ToyBlock(hidden, neurons) for _ in range(2)])
        self.head = nn.Linear(hidden, vocab)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.stack:
            h = block(h)
        return SimpleNamespace(logits=self.head(h))


TOY_SPEC = ArchSpec(family="toy", model_types=("toy_mlp",), kind="causal", blocks=("stack",), ffn_out="down")


def _toy() -> _Toy:
    torch.manual_seed(0)
    return _Toy(len(tiny_tokenizer("causal"))).double()


def _check_toy(lm: LanguageModel) -> None:
    assert (lm.spec.family, lm.n_layers, lm.n_neurons) == ("toy", 2, 12)
    ids = _ids(lm)
    with torch.no_grad(), capture(lm) as acts:
        clean = lm.model(input_ids=ids).logits
    assert acts[1].shape == (2, 6, 12)
    slots = torch.stack([lm.value_slot(1, i) for i in range(lm.n_neurons)])
    with torch.no_grad():
        torch.testing.assert_close(acts[1] @ slots + lm.ffn_out(1).bias, lm.model.stack[1].down(acts[1]),
                                   rtol=1e-12, atol=1e-12)
    with torch.no_grad(), patch(lm, [NeuronPatch(1, 4, "set", 3.0)]):
        assert not torch.equal(lm.model(input_ids=ids).logits, clean)


def test_unknown_model_refused_then_registered(registry):
    toy = _toy()
    with pytest.raises(UnsupportedArchitectureError, match="'toy_mlp'"):
        from_model(toy, tiny_tokenizer("causal"))
    assert register(TOY_SPEC) is TOY_SPEC
    assert spec_for("toy_mlp") is TOY_SPEC
    assert "toy" in [spec.family for spec in families()]
    _check_toy(from_model(toy, tiny_tokenizer("causal")))


def test_registered_spec_does_not_leak_between_tests():
    with pytest.raises(UnsupportedArchitectureError):
        spec_for("toy_mlp")


def test_arch_as_a_spec_object():
    _check_toy(from_model(_toy(), tiny_tokenizer("causal"), arch=TOY_SPEC))


def test_registering_a_mixture_of_experts_type_is_the_users_call(registry):
    spec = ArchSpec("mixtral_expert0", ("mixtral",), "causal", ("model.layers",), "mlp.experts.0.down_proj")
    register(spec)
    assert spec_for("mixtral") is spec


@pytest.fixture
def arch_module(tmp_path, monkeypatch):
    """A user's module, importable by name, that defines an ArchSpec (and something that is not one)."""
    (tmp_path / "kneuron_user_arch.py").write_text(textwrap.dedent("""
        from kneuron.models.architectures import ArchSpec

        TOY = ArchSpec(family="toy", model_types=("toy_mlp",), kind="causal", blocks=("stack",), ffn_out="down")
        NOT_A_SPEC = {"family": "toy"}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "kneuron_user_arch"


@pytest.mark.parametrize("separator", [":", "."])
def test_arch_as_a_dotted_path(arch_module, separator):
    lm = from_model(_toy(), tiny_tokenizer("causal"), arch=f"{arch_module}{separator}TOY")
    _check_toy(lm)
    assert spec_for("anything", f"{arch_module}:TOY") == TOY_SPEC


@pytest.mark.parametrize(
    "path, match",
    [
        ("kneuron_no_such_module:SPEC", "Could not import an ArchSpec"),
        ("kneuron_user_arch:MISSING", "Could not import an ArchSpec"),
        ("kneuron_user_arch:NOT_A_SPEC", "is a dict, not an ArchSpec"),
        ("nodots", "Could not import an ArchSpec"),
    ],
)
def test_bad_dotted_paths(arch_module, path, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        spec_for("llama", path)


def test_load_from_a_saved_folder_with_arch(tmp_path, arch_module):
    """kneuron.load reads a local folder offline; arch= (a dotted path) picks the spec."""
    from kneuron.models import load

    lm = tiny_lm("llama")
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    loaded = load(tmp_path / "tiny")
    assert loaded.spec.family == "llama" and loaded.n_neurons == 32
    ids = _ids(lm)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, lm.model(input_ids=ids).logits)  # sdpa vs eager
    custom = ArchSpec("llama_custom", ("llama",), "causal", ("model.layers",), "mlp.down_proj")
    (tmp_path / "kneuron_user_arch2.py").write_text(
        "from kneuron.models.architectures import ArchSpec\n"
        f"SPEC = ArchSpec({custom.family!r}, ('llama',), 'causal', ('model.layers',), 'mlp.down_proj')\n"
    )
    assert load(tmp_path / "tiny", arch="kneuron_user_arch2:SPEC").spec == custom


def test_arch_as_a_file_path(tmp_path):
    """``path/to/file.py:NAME`` needs no importable module (the CLI's --arch runs outside the user's folder)."""
    (tmp_path / "my arch.py").write_text(
        "from kneuron.models.architectures import ArchSpec\n"
        "TOY = ArchSpec(family='toy', model_types=('toy_mlp',), kind='causal', blocks=('stack',), ffn_out='down')\n"
    )
    _check_toy(from_model(_toy(), tiny_tokenizer("causal"), arch=f"{tmp_path / 'my arch.py'}:TOY"))
    with pytest.raises(UnsupportedArchitectureError, match=r"Could not import an ArchSpec.*no Python file at"):
        spec_for("llama", f"{tmp_path / 'missing.py'}:TOY")
    with pytest.raises(UnsupportedArchitectureError, match="Could not import an ArchSpec"):
        spec_for("llama", f"{tmp_path / 'my arch.py'}:MISSING")


def test_unknown_model_type_names_the_cli_option():
    with pytest.raises(UnsupportedArchitectureError) as info:
        spec_for("mamba2")
    assert "kneuron --arch your_package.your_module:YOUR_SPEC COMMAND" in str(info.value)
    assert "KNEURON_ARCH" in str(info.value) and "path/to/file.py:YOUR_SPEC" in str(info.value)


@pytest.mark.parametrize("model_type", ["t5", "mt5", "bart"])
def test_an_encoder_decoder_model_is_unsupported_not_a_causal_model_to_register(model_type):
    """The T5 message suggested registering T5 with kind='causal', which cannot work (issue 27 item 7)."""
    from kneuron.errors import UnsupportedArchitectureError
    from kneuron.models.architectures import spec_for

    with pytest.raises(UnsupportedArchitectureError) as found:
        spec_for(model_type)
    assert "encoder-decoder" in str(found.value) and "does not support" in str(found.value)
    assert "register(" not in str(found.value) and "causal'" not in str(found.value)
