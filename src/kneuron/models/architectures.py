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
from dataclasses import dataclass
from typing import Literal

from torch import nn

from kneuron.errors import UnsupportedArchitectureError

ModelKind = Literal["mlm", "causal"]
ValueLayout = Literal["linear", "conv1d"]


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
        position_fields: config fields that hold the model's position limit, the first present one wins
            (``LanguageModel.max_positions``); a family without any (ALiBi, e.g. BLOOM) has no limit.
        positions_after_padding: position ids start after ``pad_token_id`` (RoBERTa): ``pad_token_id + 1``
            of the configured positions are never used by a token.
    """

    family: str
    model_types: tuple[str, ...]
    kind: ModelKind
    blocks: tuple[str, ...]
    ffn_out: str
    layout: ValueLayout = "linear"
    flat_tokens: bool = False
    ffn_in: str | None = None
    position_fields: tuple[str, ...] = ("max_position_embeddings", "n_positions")
    positions_after_padding: bool = False


_REGISTRY: dict[str, ArchSpec] = {}

#: model types that route tokens through several experts: one FFN per expert, no single neuron set.
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


def _gated(family: str, *model_types: str, blocks: tuple[str, ...] = ("model.layers",)) -> ArchSpec:
    return ArchSpec(family, model_types or (family,), "causal", blocks, "mlp.down_proj")


for _spec in (
    # masked LMs
    ArchSpec("bert", ("bert",), "mlm", ("bert.encoder.layer", "encoder.layer"), "output.dense",
             ffn_in="intermediate"),
    ArchSpec("roberta", ("roberta", "xlm-roberta", "camembert"), "mlm",
             ("roberta.encoder.layer", "encoder.layer"), "output.dense", ffn_in="intermediate",
             positions_after_padding=True),
    ArchSpec("distilbert", ("distilbert",), "mlm", ("distilbert.transformer.layer", "transformer.layer"),
             "ffn.lin2", ffn_in="ffn"),
    ArchSpec("electra", ("electra",), "mlm", ("electra.encoder.layer", "encoder.layer"), "output.dense",
             ffn_in="intermediate"),
    # causal LMs with a plain FFN
    ArchSpec("gpt2", ("gpt2",), "causal", ("transformer.h", "h"), "mlp.c_proj", layout="conv1d"),
    ArchSpec("gpt_neo", ("gpt_neo",), "causal", ("transformer.h", "h"), "mlp.c_proj"),
    ArchSpec("gptj", ("gptj",), "causal", ("transformer.h", "h"), "mlp.fc_out"),
    ArchSpec("gpt_neox", ("gpt_neox",), "causal", ("gpt_neox.layers", "layers"), "mlp.dense_4h_to_h"),
    ArchSpec("opt", ("opt",), "causal", ("model.decoder.layers", "decoder.layers"), "fc2", flat_tokens=True),
    ArchSpec("falcon", ("falcon",), "causal", ("transformer.h", "h"), "mlp.dense_4h_to_h"),
    ArchSpec("phi", ("phi",), "causal", ("model.layers", "layers"), "mlp.fc2"),
    # causal LMs with a gated FFN: the neuron is act(gate) * up, the input of down_proj
    _gated("llama", "llama", "smollm3"),
    _gated("mistral"),
    _gated("qwen2"),
    _gated("qwen3"),
    _gated("gemma"),
    _gated("gemma2"),
    _gated("gemma3", "gemma3_text", "gemma3", blocks=("model.layers", "model.language_model.layers",
                                                      "language_model.model.layers")),
    _gated("phi3"),
    _gated("olmo", "olmo", "olmo2"),
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
