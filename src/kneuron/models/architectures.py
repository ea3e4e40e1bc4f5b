"""The architecture registry: where each model family keeps its FFN neurons.

A knowledge neuron is one unit of the FFN intermediate activation, i.e. one input feature of the
FFN output projection. One :class:`ArchSpec` per family says where the transformer blocks are,
which module of a block is that output projection, how the projection stores a neuron's value slot,
and whether the model is masked or causal. Families are detected from ``config.model_type``.

Registering a family of your own::

    from kneuron.models.architectures import ArchSpec, register
    register(ArchSpec(family="mymodel", model_types=("mymodel",), kind="causal",
                      blocks=("model.layers",), ffn_out="mlp.down_proj"))

or pass ``arch="my_package.my_module:MY_SPEC"`` (or ``arch="path/to/my_arch.py:MY_SPEC"``) to
:func:`kneuron.load`; on the command line, ``kneuron --arch my_package.my_module:MY_SPEC COMMAND ...`` or the
environment variable ``KNEURON_ARCH``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from kneuron.errors import UnsupportedArchitectureError

ModelKind = Literal["mlm", "causal"]
ValueLayout = Literal["linear", "conv1d"]
NormKind = Literal["layernorm", "rmsnorm"]


@dataclass(frozen=True)
class ArchSpec:
    """Where one model family keeps its FFN neurons.

    Attributes:
        family: readable family name ("llama", "bert", ...).
        model_types: the ``config.model_type`` values this spec serves.
        kind: "mlm" (masked, answer at [MASK]) or "causal" (answer is the continuation).
        blocks: candidate dotted paths, from the loaded model, to the list of transformer blocks;
            the first that resolves is used (so both ``BertForMaskedLM`` and ``BertModel`` work).
        ffn_out: dotted path, inside a block, of the FFN output projection whose *input* is the
            neuron activation (for gated FFNs that input is act(gate) * up).
        layout: how the projection stores neuron i's value slot: "linear" is column i of an
            ``nn.Linear`` weight (out x in); "conv1d" is row i of GPT-2's ``Conv1D`` weight (in x out).
        flat_tokens: the block flattens (batch, seq) into one axis before the FFN (OPT does).
        ffn_in: optional dotted path, inside a block, of the module whose input is the FFN's input and
            whose output feeds only the FFN (its first projection, or the FFN as a whole). With it, a
            masked model's attribution runs the last block's FFN at the answer positions only.
        attention_out: dotted path, inside a block, of the attention's output projection: its output is what the
            attention adds to the residual stream (before any post-attention norm, which recomputes the same from
            it). Causal tracing (:mod:`kneuron.interventions.tracing`) restores it; None: the family's attention
            output cannot be traced. The MLP output it restores is ``ffn_out``'s output, the block output the
            block's own.
        position_fields: config fields that hold the model's position limit, the first present one wins
            (``LanguageModel.max_positions``); a family without any (ALiBi, e.g. BLOOM) has no limit.
        positions_after_padding: position ids start after ``pad_token_id`` (RoBERTa): ``pad_token_id + 1``
            of the configured positions are never used by a token.
        batch_head_inputs: keyword inputs of a block laid out (batch · heads, ...) rather than broadcast over the
            batch (BLOOM's ``alibi``). The attribution engine calls the model on one row and feeds its own rows in at
            the blocks, so it repeats these inputs to match the rows a block runs.

    The direct readout (the "lpi" estimator reads a neuron's value through the final norm and the output head,
    :func:`direct_readout_problem`) needs five more facts; a spec without ``final_norm`` cannot be read out so:

        final_norm: candidate dotted paths, from the loaded model, to the norm between the last block and the
            output head; the first that resolves is used. A path whose last attribute exists and is None says
            the model was built without that norm (OPT with ``_remove_final_layer_norm``): the readout is then
            the head alone.
        final_norm_kind: "layernorm" (centre, divide by the standard deviation) or "rmsnorm" (divide by the
            root mean square).
        norm_weight_offset: the norm multiplies by ``offset + weight`` (Gemma's RMSNorm: 1 + weight).
        norm_eps: the norm's epsilon when the module keeps none as an attribute (OLMo's LayerNorm has 1e-5
            written in its forward); otherwise its ``eps`` or ``variance_epsilon`` is read.
        head_projection: candidate dotted paths of a linear map between the final norm and the head (OPT's
            ``project_out`` when its embedding width differs from the hidden width); absent or None: none.
        ffn_output_norm: dotted path, inside a block, of the norm the block passes the FFN output through before
            adding it to the residual stream (Gemma 2 and 3, OLMo 2: ``post_feedforward_layernorm``); None when the
            FFN output is added as it is. It must be an RMSNorm, ``x / sqrt(mean(x²) + eps) · (norm_weight_offset
            + weight)``: attribution holds its 1/RMS factor at its clean value while it scales the layer's
            neurons (:mod:`kneuron.attribution.ffn_norm`), and the direct readout refuses such a family.
        pre_norm_flag: a config field that is False when the model's blocks are post-norm (OPT's
            ``do_layer_norm_before``: OPT-350m normalises after the residual addition).
        post_norm_flag: a config field that is True when the residual stream a block passes on is normalised
            (BLOOM's ``apply_residual_connection_post_layernorm``: the residual is the layer-normed input).
        ffn_output_multiplier: a config field by which every block multiplies its FFN output before adding it to
            the stream (Granite's ``residual_multiplier``): neuron i then adds that times a_i · w_i.
        logit_multiplier: a config field by which the model multiplies its logits (Cohere's ``logit_scale``).
        logit_divisor: a config field by which the model divides its logits (Granite's ``logits_scaling``).
        settings_problem: a function of the loaded model returning why kneuron cannot work with a model built
            with those settings (one line), or None; :class:`~kneuron.models.language_model.LanguageModel` refuses such
            a model (BLOOM's ``slow_but_exact`` bypasses the FFN output projection's forward).

    Shared layers (ALBERT runs one layer's weights at every depth):

        depth_schedule: the name of a :data:`DEPTH_SCHEDULES` function that, from the module ``blocks``
            resolves to and the model's config, lists the block each depth runs (one entry per FFN application,
            in the order of one forward pass). Without it every block of ``blocks`` is one depth. When a block
            serves several depths a knowledge neuron is (depth, index): ``lm.n_layers`` counts depths, hooks act
            at one depth only (:func:`kneuron.models.hooks.at_depth`), and the depths that run one block share
            its value slots, so an edit of neuron (d, i) changes neuron i at every one of them.
    """

    family: str
    model_types: tuple[str, ...]
    kind: ModelKind
    blocks: tuple[str, ...]
    ffn_out: str
    layout: ValueLayout = "linear"
    flat_tokens: bool = False
    ffn_in: str | None = None
    attention_out: str | None = None
    position_fields: tuple[str, ...] = ("max_position_embeddings", "n_positions")
    positions_after_padding: bool = False
    batch_head_inputs: tuple[str, ...] = ()
    final_norm: tuple[str, ...] = ()
    final_norm_kind: NormKind | None = None
    norm_weight_offset: float = 0.0
    norm_eps: float | None = None
    head_projection: tuple[str, ...] = ()
    ffn_output_norm: str | None = None
    pre_norm_flag: str | None = None
    post_norm_flag: str | None = None
    ffn_output_multiplier: str | None = None
    logit_multiplier: str | None = None
    logit_divisor: str | None = None
    settings_problem: Callable[[nn.Module], str | None] | None = None
    depth_schedule: str | None = None


#: lists the block each depth runs, from the module a spec's ``blocks`` resolves to and the model's config
DepthSchedule = Callable[[nn.Module, object], list[nn.Module]]


def albert_depths(groups: nn.Module, config: object) -> list[nn.Module]:
    """ALBERT's depths: ``AlbertTransformer`` runs, for i in 0..num_hidden_layers-1, every layer of group
    ``int(i / (num_hidden_layers / num_hidden_groups))`` (``inner_group_num`` of them, usually 1); ``groups`` is
    its ``albert_layer_groups``. Released ALBERTs have 1 group of 1 layer: one layer run num_hidden_layers times."""
    depths = int(getattr(config, "num_hidden_layers", 0))
    n_groups = int(getattr(config, "num_hidden_groups", 1))
    if depths < 1 or not 1 <= n_groups <= len(groups):
        raise UnsupportedArchitectureError(
            f"An ALBERT config with num_hidden_layers={depths} and num_hidden_groups={n_groups} does not match its "
            f"{len(groups)} layer groups.")
    order: list[nn.Module] = []
    for depth in range(depths):
        order.extend(groups[int(depth / (depths / n_groups))].albert_layers)
    return order


#: the depth schedules a spec's ``depth_schedule`` may name; add yours with ``DEPTH_SCHEDULES[name] = fn``
DEPTH_SCHEDULES: dict[str, DepthSchedule] = {"albert": albert_depths}


_REGISTRY: dict[str, ArchSpec] = {}

#: model types that route tokens through several experts: one FFN per expert, no single neuron set.
#: encoder-decoder (sequence-to-sequence) model types: neither masked nor causal LMs, so unsupported (a spec
#: registered as kind='causal' would not make them work: their FFNs sit in two stacks and the answer comes from a
#: decoder fed by an encoder)
ENCODER_DECODER = frozenset(
    {"t5", "mt5", "umt5", "longt5", "bart", "mbart", "pegasus", "pegasus_x", "marian", "led", "blenderbot",
     "blenderbot-small", "prophetnet", "bigbird_pegasus", "m2m_100", "fsmt", "plbart", "mvp", "encoder-decoder",
     "nllb-moe", "seamless_m4t", "t5gemma"}
)
MIXTURE_OF_EXPERTS = frozenset(
    {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "dbrx", "jamba", "olmoe",
     "phimoe", "granitemoe", "switch_transformers", "gpt_oss", "llama4", "minimax"}
)


def register(spec: ArchSpec) -> ArchSpec:
    """Add (or replace) a family in the registry; returns the spec."""
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec
    return spec


def families() -> list[ArchSpec]:
    """Every registered family, once each, in registration order."""
    seen: dict[str, ArchSpec] = {}
    for spec in _REGISTRY.values():
        seen.setdefault(spec.family, spec)
    return list(seen.values())


def _gated(family: str, *model_types: str, blocks: tuple[str, ...] = ("model.layers",),
           final_norm: tuple[str, ...] = ("model.norm",), **readout) -> ArchSpec:
    return ArchSpec(family, model_types or (family,), "causal", blocks, "mlp.down_proj", final_norm=final_norm,
                    final_norm_kind=readout.pop("final_norm_kind", "rmsnorm"),
                    attention_out=readout.pop("attention_out", "self_attn.o_proj"), **readout)


def _bloom_settings_problem(model: nn.Module) -> str | None:
    """BLOOM's MLP with ``slow_but_exact`` and ``pretraining_tp > 1`` bypasses ``dense_4h_to_h``'s forward."""
    if any(getattr(m, "slow_but_exact", False) and getattr(m, "pretraining_tp", 1) > 1 for m in model.modules()):
        return ("it was built with slow_but_exact=True and pretraining_tp > 1, so its MLP multiplies slices of "
                "dense_4h_to_h's weight itself and no hook sees the neurons; load it with "
                "from_pretrained(..., slow_but_exact=False) (the same product, summed at once)")
    return None


_LN_F = dict(final_norm=("transformer.ln_f", "ln_f"), final_norm_kind="layernorm")


for _spec in (
    # masked LMs
    ArchSpec("bert", ("bert",), "mlm", ("bert.encoder.layer", "encoder.layer"), "output.dense",
             ffn_in="intermediate", attention_out="attention.output.dense"),
    ArchSpec("roberta", ("roberta", "xlm-roberta", "camembert"), "mlm",
             ("roberta.encoder.layer", "encoder.layer"), "output.dense", ffn_in="intermediate",
             positions_after_padding=True, attention_out="attention.output.dense"),
    ArchSpec("distilbert", ("distilbert",), "mlm", ("distilbert.transformer.layer", "transformer.layer"),
             "ffn.lin2", ffn_in="ffn", attention_out="attention.out_lin"),
    ArchSpec("electra", ("electra",), "mlm", ("electra.encoder.layer", "encoder.layer"), "output.dense",
             ffn_in="intermediate", attention_out="attention.output.dense"),
    # ModernBERT: a gated FFN whose Wi computes input and gate in one matrix (chunked in two); the neuron is
    # act(input) * gate, the input of Wo. Its blocks are pre-norm, its tokens stay (batch, seq) (transformers 5
    # unpads only inside flash attention), and the MLP reads nothing but its own input, so ffn_in is the MLP.
    ArchSpec("modernbert", ("modernbert",), "mlm", ("model.layers", "layers"), "mlp.Wo", ffn_in="mlp",
             attention_out="attn.Wo"),
    # one layer's weights at every depth: a neuron is (depth, index), and the depths share value slots
    ArchSpec("albert", ("albert",), "mlm", ("albert.encoder.albert_layer_groups", "encoder.albert_layer_groups"),
             "ffn_output", ffn_in="ffn", depth_schedule="albert", attention_out="attention.dense"),
    # causal LMs with a plain FFN
    ArchSpec("gpt2", ("gpt2",), "causal", ("transformer.h", "h"), "mlp.c_proj", layout="conv1d",
             attention_out="attn.c_proj", **_LN_F),
    ArchSpec("gpt_neo", ("gpt_neo",), "causal", ("transformer.h", "h"), "mlp.c_proj",
             attention_out="attn.attention.out_proj", **_LN_F),
    ArchSpec("gptj", ("gptj",), "causal", ("transformer.h", "h"), "mlp.fc_out", attention_out="attn.out_proj", **_LN_F),
    ArchSpec("gpt_neox", ("gpt_neox",), "causal", ("gpt_neox.layers", "layers"), "mlp.dense_4h_to_h",
             final_norm=("gpt_neox.final_layer_norm", "final_layer_norm"), final_norm_kind="layernorm",
             attention_out="attention.dense"),
    ArchSpec("opt", ("opt",), "causal", ("model.decoder.layers", "decoder.layers"), "fc2", flat_tokens=True,
             final_norm=("model.decoder.final_layer_norm", "decoder.final_layer_norm"), final_norm_kind="layernorm",
             head_projection=("model.decoder.project_out", "decoder.project_out"),
             pre_norm_flag="do_layer_norm_before", attention_out="self_attn.out_proj"),
    ArchSpec("falcon", ("falcon",), "causal", ("transformer.h", "h"), "mlp.dense_4h_to_h",
             attention_out="self_attention.dense", **_LN_F),
    # BLOOM: ALiBi (no position embeddings, so no position limit) laid out (batch · heads, 1, keys)
    ArchSpec("bloom", ("bloom",), "causal", ("transformer.h", "h"), "mlp.dense_4h_to_h", position_fields=(),
             batch_head_inputs=("alibi",), post_norm_flag="apply_residual_connection_post_layernorm",
             settings_problem=_bloom_settings_problem, attention_out="self_attention.dense", **_LN_F),
    ArchSpec("phi", ("phi",), "causal", ("model.layers", "layers"), "mlp.fc2",
             final_norm=("model.final_layernorm", "final_layernorm"), final_norm_kind="layernorm",
             attention_out="self_attn.dense"),
    ArchSpec("starcoder2", ("starcoder2",), "causal", ("model.layers", "layers"), "mlp.c_proj",
             final_norm=("model.norm", "norm"), final_norm_kind="layernorm",
             attention_out="self_attn.o_proj"),
    # causal LMs with a gated FFN: the neuron is act(gate) * up, the input of down_proj
    _gated("llama", "llama", "smollm3"),
    _gated("mistral"),
    _gated("qwen2"),
    _gated("qwen3"),
    _gated("gemma", norm_weight_offset=1.0),
    _gated("gemma2", norm_weight_offset=1.0, ffn_output_norm="post_feedforward_layernorm"),
    _gated("gemma3", "gemma3_text", "gemma3", blocks=("model.layers", "model.language_model.layers",
                                                      "language_model.model.layers"),
           final_norm=("model.norm", "model.language_model.norm", "language_model.model.norm"),
           norm_weight_offset=1.0, ffn_output_norm="post_feedforward_layernorm"),
    _gated("phi3"),
    # StableLM: LayerNorms; with use_parallel_residual its FFN reads the same normed input as the attention, and its
    # output is still added to the stream as it is (qk_layernorm norms only inside the attention)
    _gated("stablelm", final_norm_kind="layernorm"),
    # Granite: Llama's blocks with every residual branch (attention and FFN output) times residual_multiplier, the
    # embeddings times embedding_multiplier and the logits divided by logits_scaling
    _gated("granite", ffn_output_multiplier="residual_multiplier", logit_divisor="logits_scaling"),
    # Cohere (Command R): attention and FFN in parallel on one LayerNorm (without bias), logits times logit_scale
    _gated("cohere", final_norm_kind="layernorm", logit_multiplier="logit_scale"),
    # OLMo's LayerNorm has neither weight nor bias, and its epsilon is written in its forward
    _gated("olmo", final_norm_kind="layernorm", norm_eps=1e-5),
    # OLMo 2 normalises after attention and after the FFN (RMSNorms with a weight), not before
    _gated("olmo2", ffn_output_norm="post_feedforward_layernorm"),
):
    register(_spec)


def _import_file(path: str):
    """The module defined by the Python file at ``path`` (for ``--arch ./my_arch.py:SPEC``)."""
    name = "kneuron_arch_" + importlib.util.source_hash(path.encode()).hex()
    if name in sys.modules:
        return sys.modules[name]
    location = importlib.util.spec_from_file_location(name, path)
    if location is None or location.loader is None:
        raise ImportError(f"no Python file at {path}")
    module = importlib.util.module_from_spec(location)
    try:
        location.loader.exec_module(module)
    except FileNotFoundError as exc:
        raise ImportError(f"no Python file at {path}") from exc
    sys.modules[name] = module
    return module


def _load_dotted(path: str) -> ArchSpec:
    if ":" in path and path.rpartition(":")[0].endswith(".py"):
        module_name, _, attr = path.rpartition(":")
        importer = _import_file
    else:
        module_name, _, attr = path.replace(":", ".").rpartition(".")
        importer = importlib.import_module
    try:
        spec = getattr(importer(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UnsupportedArchitectureError(
            f"Could not import an ArchSpec from {path!r} ({exc}). Give 'package.module:NAME' (importable from "
            "sys.path / PYTHONPATH) or 'path/to/file.py:NAME', where NAME is a "
            "kneuron.models.architectures.ArchSpec."
        ) from exc
    if not isinstance(spec, ArchSpec):
        raise UnsupportedArchitectureError(f"{path!r} is a {type(spec).__name__}, not an ArchSpec.")
    return spec


def spec_for(model_type: str, arch: ArchSpec | str | None = None) -> ArchSpec:
    """The spec for ``model_type``; ``arch`` (a spec or a dotted path to one) overrides detection."""
    if isinstance(arch, ArchSpec):
        return arch
    if isinstance(arch, str):
        return _load_dotted(arch)
    if model_type not in _REGISTRY:  # (mixture-of-experts types are never built in, only user-registered)
        names = ", ".join(sorted(_REGISTRY))
        if model_type in ENCODER_DECODER:
            raise UnsupportedArchitectureError(
                f"{model_type!r} is an encoder-decoder (sequence-to-sequence) model, which kneuron does not support: "
                "it attributes the FFN neurons of masked (encoder-only) and causal (decoder-only) language models. "
                f"Use one of those instead (supported: {names}).")
        if model_type in MIXTURE_OF_EXPERTS:
            problem = (f"{model_type!r} is a mixture-of-experts model: each expert has its own FFN, so there is "
                       "no single set of FFN neurons to attribute; kneuron supports dense models.")
            todo = "To treat one FFN (e.g. one expert's) as the neurons anyway, register an ArchSpec naming it, e.g."
        else:
            problem = f"No architecture spec for model_type {model_type!r}."
            todo = "To add one, register an ArchSpec naming the block list and the FFN output projection, e.g."
        raise UnsupportedArchitectureError(
            f"{problem} Supported: {names}.\n{todo}\n"
            "  from kneuron.models.architectures import ArchSpec, register\n"
            f"  register(ArchSpec(family={model_type!r}, model_types=({model_type!r},), kind='causal',\n"
            "                    blocks=('model.layers',), ffn_out='mlp.down_proj'))\n"
            "or pass arch='your_package.your_module:YOUR_SPEC' to kneuron.load; on the command line: "
            "kneuron --arch your_package.your_module:YOUR_SPEC COMMAND ... (or set KNEURON_ARCH; "
            "'path/to/file.py:YOUR_SPEC' works too)."
        )
    return _REGISTRY[model_type]


def resolve(root: nn.Module, dotted: str) -> nn.Module | None:
    """The submodule at ``dotted`` below ``root``, or None when the path does not exist."""
    module: nn.Module = root
    for part in dotted.split("."):
        if part.isdigit() and isinstance(module, (nn.ModuleList, nn.Sequential)):
            index = int(part)
            if index >= len(module):
                return None
            module = module[index]
        elif hasattr(module, part) and isinstance(getattr(module, part), nn.Module):
            module = getattr(module, part)
        else:
            return None
    return module


_ABSENT = object()


def _resolve_or_absent(root: nn.Module, dotted: str) -> nn.Module | None | object:
    """The module at ``dotted``; None when its last attribute exists and is None; ``_ABSENT`` when unresolved."""
    parent_path, _, last = dotted.rpartition(".")
    parent = resolve(root, parent_path) if parent_path else root
    if parent is None or not hasattr(parent, last):
        return _ABSENT
    value = getattr(parent, last)
    if value is None:
        return None
    return value if isinstance(value, nn.Module) else _ABSENT


def direct_readout_problem(spec: ArchSpec, config: object) -> str | None:
    """Why a neuron's value slot cannot be read out directly through the final norm and the head (the "lpi"
    estimator), or None when it can: the blocks must be pre-norm with the FFN output added to the stream as it
    is (block output = stream + FFN output), and the spec must say where the final norm is."""
    model_type = getattr(config, "model_type", "")
    if spec.kind == "mlm":
        return (f"{spec.family} is a masked LM: its blocks normalise after the residual addition and its head "
                "transforms the stream non-linearly, so a neuron's value has no direct readout")
    if spec.ffn_output_norm is not None:
        return (f"{model_type or spec.family} passes the FFN output through a norm ({spec.ffn_output_norm}) before "
                "the residual, so a neuron adds no fixed vector to the stream")
    if spec.pre_norm_flag is not None and getattr(config, spec.pre_norm_flag, True) is False:
        return (f"this {model_type} model has post-norm blocks ({spec.pre_norm_flag}=False): the stream is "
                "normalised after each FFN output is added")
    if spec.post_norm_flag is not None and getattr(config, spec.post_norm_flag, False) is True:
        return (f"this {model_type} model passes on a normalised residual ({spec.post_norm_flag}=True): the stream "
                "is normalised after each FFN output is added")
    if not spec.final_norm or spec.final_norm_kind is None:
        return (f"the {spec.family!r} spec names no final norm: give its ArchSpec final_norm and "
                "final_norm_kind")
    return None


def _config_number(config: object, field: str | None) -> float:
    if field is None:
        return 1.0
    value = getattr(config, field, None)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UnsupportedArchitectureError(
            f"The model's config has no number {field!r} (it is {value!r}), which its family's spec names.")
    return float(value)


def ffn_output_multiplier(spec: ArchSpec, config: object) -> float:
    """What each block multiplies its FFN output by before adding it to the stream (1 for most families)."""
    return _config_number(config, spec.ffn_output_multiplier)


def logit_multiplier(spec: ArchSpec, config: object) -> float:
    """What the model multiplies the output head's logits by (1 for most families; before any softcapping)."""
    return _config_number(config, spec.logit_multiplier) / _config_number(config, spec.logit_divisor)


def final_norm_of(spec: ArchSpec, model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the output head (None when the model was built without one)."""
    for path in spec.final_norm:
        found = _resolve_or_absent(model, path)
        if found is not _ABSENT:
            return found  # type: ignore[return-value]
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} has none of the final norms {spec.final_norm} that the {spec.family!r} spec "
        "names; register a spec with the right 'final_norm' path.")


def head_projection_of(spec: ArchSpec, model: nn.Module) -> nn.Module | None:
    """The linear map between the final norm and the output head, if the model has one (OPT's project_out)."""
    for path in spec.head_projection:
        found = _resolve_or_absent(model, path)
        if isinstance(found, nn.Module):
            return found
    return None


def norm_epsilon(spec: ArchSpec, norm: nn.Module) -> float:
    """The epsilon ``norm`` adds to the variance (or mean square): its own attribute, else the spec's."""
    for name in ("eps", "variance_epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    if spec.norm_eps is not None:
        return spec.norm_eps
    raise UnsupportedArchitectureError(
        f"The final norm {type(norm).__name__} keeps no 'eps' or 'variance_epsilon': give the {spec.family!r} "
        "spec's norm_eps.")
