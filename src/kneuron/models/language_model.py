"""`LanguageModel`: a loaded model, its tokenizer and the map to its FFN neurons."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kneuron.errors import FactError, NeuronIndexError, UnsupportedArchitectureError
from kneuron.models.architectures import DEPTH_SCHEDULES, ArchSpec, ModelKind, resolve


@dataclass
class LanguageModel:
    """A Hugging Face model ready for neuron work.

    Attributes:
        model: the ``transformers`` model, in eval mode.
        tokenizer: its tokenizer.
        spec: the family's :class:`ArchSpec`.
        name: where it came from (hub id, path or embedded name).

    A *layer* is a depth: one application of an FFN in a forward pass. Most models run each block once, so
    layer l is block l. A model with shared layers (ALBERT; :attr:`shared_layers`) runs one block at several
    depths: ``block(l)`` is then the same module for each of them, a neuron (l, i) is neuron i at depth l, every
    hook acts at its own depth only (:func:`kneuron.models.hooks.at_depth`), and the depths of one block
    (:meth:`sharing`) share its value slots.
    """

    model: nn.Module
    tokenizer: object
    spec: ArchSpec
    name: str = "model"
    _blocks: list[nn.Module] = field(init=False, repr=False)
    _occurrence: list[int] = field(init=False, repr=False)  # depth l is the k-th forward of its block
    _sharing: list[tuple[int, ...]] = field(init=False, repr=False)  # the depths that run depth l's block

    def __post_init__(self) -> None:
        self.model.eval()
        for path in self.spec.blocks:
            blocks = resolve(self.model, path)
            if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 0:
                self._blocks = self._depths(blocks)
                break
        else:
            raise UnsupportedArchitectureError(
                f"{type(self.model).__name__} has none of the block lists {self.spec.blocks} that the "
                f"{self.spec.family!r} spec names; register a spec with the right 'blocks' path."
            )
        problem = self.spec.settings_problem(self.model) if self.spec.settings_problem else None
        if problem is not None:
            raise UnsupportedArchitectureError(f"kneuron cannot work with {type(self.model).__name__}: {problem}.")
        paths = {"FFN output projection": self.spec.ffn_out, "FFN input (ffn_in)": self.spec.ffn_in,
                 "FFN output norm (ffn_output_norm)": self.spec.ffn_output_norm}
        for index in range(len(self._blocks)):
            for role, path in paths.items():
                if path is not None and resolve(self._blocks[index], path) is None:
                    raise UnsupportedArchitectureError(
                        f"Block {index} of {type(self.model).__name__} has no module {path!r} "
                        f"(the {self.spec.family!r} spec's {role})."
                    )
        seen: dict[int, list[int]] = {}
        self._occurrence = []
        for depth, block in enumerate(self._blocks):
            self._occurrence.append(len(seen.setdefault(id(block), [])))
            seen[id(block)].append(depth)
        self._sharing = [tuple(seen[id(block)]) for block in self._blocks]

    def _depths(self, blocks: nn.Module) -> list[nn.Module]:
        """The block each depth runs: the spec's depth schedule of ``blocks``, or ``blocks`` one by one."""
        name = self.spec.depth_schedule
        if name is None:
            return list(blocks)
        if name not in DEPTH_SCHEDULES:
            raise UnsupportedArchitectureError(
                f"The {self.spec.family!r} spec names the depth schedule {name!r}, which is not one of "
                f"{sorted(DEPTH_SCHEDULES)}; add it to kneuron.models.architectures.DEPTH_SCHEDULES.")
        depths = DEPTH_SCHEDULES[name](blocks, getattr(self.model, "config", None))
        if not depths or not all(isinstance(block, nn.Module) for block in depths):
            raise UnsupportedArchitectureError(
                f"The depth schedule {name!r} gave no blocks for {type(self.model).__name__}.")
        return depths

    @property
    def kind(self) -> ModelKind:
        """"mlm" or "causal"."""
        return self.spec.kind

    @property
    def n_layers(self) -> int:
        return len(self._blocks)

    @property
    def shared_layers(self) -> bool:
        """Whether some block runs at several depths (ALBERT), so that depths share value slots."""
        return any(len(depths) > 1 for depths in self._sharing)

    def sharing(self, layer: int) -> tuple[int, ...]:
        """The depths that run the same block as ``layer`` (``layer`` included), ascending: their neuron i is one
        value slot, so an edit of one of them changes all of them. Just ``(layer,)`` without shared layers."""
        self.check_layer(layer)
        return self._sharing[layer]

    def occurrence(self, layer: int) -> int:
        """Which forward of its block, within one forward pass of the model, depth ``layer`` is (0 = the first);
        always 0 without shared layers."""
        self.check_layer(layer)
        return self._occurrence[layer]

    @property
    def n_neurons(self) -> int:
        """Neurons per layer (the FFN intermediate width)."""
        weight = self.ffn_out(0).weight
        return weight.shape[1] if self.spec.layout == "linear" else weight.shape[0]

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the first parameter that holds values (parameters on ``meta`` are
        offloaded by accelerate's ``device_map`` and are loaded onto their execution device while they run)."""
        first = None
        for parameter in self.model.parameters():
            first = first if first is not None else parameter
            if not parameter.is_meta:
                return parameter.device
        return first.device if first is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_positions(self) -> int | None:
        """The longest input (in tokens) the model's configuration allows, or None when it sets no limit.

        Read from the config field the spec names (``max_position_embeddings``, GPT-2's ``n_positions``);
        RoBERTa-style models lose ``pad_token_id + 1`` of them. Past it, models with learned positions
        (BERT, GPT-2, OPT) fail with an IndexError and rotary ones (Llama) run beyond what they were made for.
        """
        config = getattr(self.model, "config", None)
        if config is None:
            return None
        if hasattr(config, "get_text_config"):  # multimodal wrappers keep the language model's config inside
            config = config.get_text_config()
        for name in self.spec.position_fields:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                if self.spec.positions_after_padding:
                    value -= (getattr(config, "pad_token_id", None) or 0) + 1
                return value
        return None

    def check_length(self, n_tokens: int) -> None:
        """Refuse an input of ``n_tokens`` tokens that does not fit in :attr:`max_positions`."""
        limit = self.max_positions
        if limit is not None and n_tokens > limit:
            raise FactError(
                f"The prompt is {n_tokens} tokens long (answer tokens and special tokens included), and {self.name} "
                f"reads at most {limit} positions: shorten the prompt by {n_tokens - limit} tokens or more."
            )

    def block(self, layer: int) -> nn.Module:
        """The block that runs at depth ``layer`` (the same module at every depth of :meth:`sharing`)."""
        self.check_layer(layer)
        return self._blocks[layer]

    def ffn_out(self, layer: int) -> nn.Module:
        """The FFN output projection of ``layer``: its input is that layer's neuron activations."""
        module = resolve(self.block(layer), self.spec.ffn_out)
        assert module is not None  # checked in __post_init__
        return module

    def attention_out(self, layer: int) -> nn.Module:
        """The attention output projection of ``layer`` (``ArchSpec.attention_out``): its output is what the attention
        adds to the residual stream. Checked when asked for, not at load, so that a family whose attention path is
        unknown still loads for everything else.

        Raises:
            UnsupportedArchitectureError: the spec names no attention output, or the block has no such module.
        """
        path = self.spec.attention_out
        module = resolve(self.block(layer), path) if path else None
        if module is None:
            named = f"names {path!r}, which block {layer} does not have" if path else "names none"
            raise UnsupportedArchitectureError(
                f"The {self.spec.family!r} spec's attention output (attention_out) {named}: give its dotted path "
                "inside a block (e.g. 'self_attn.o_proj') in the family's ArchSpec.")
        return module

    def ffn_output_norm(self, layer: int) -> nn.Module | None:
        """The norm ``layer``'s block applies to its FFN output before the residual (Gemma 2/3, OLMo 2), or None."""
        if self.spec.ffn_output_norm is None:
            return None
        return resolve(self.block(layer), self.spec.ffn_output_norm)

    def value_slot(self, layer: int, neuron: int) -> torch.Tensor:
        """A view of the vector neuron ``(layer, neuron)`` writes into the residual stream per unit of activation
        (Granite's blocks add it times ``residual_multiplier``: ``ArchSpec.ffn_output_multiplier``; with shared
        layers, the same vector for every depth of :meth:`sharing`)."""
        self.check_neuron(layer, neuron)
        weight = self.ffn_out(layer).weight
        return weight[:, neuron] if self.spec.layout == "linear" else weight[neuron, :]

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise NeuronIndexError(
                f"Layer {layer} is out of range: {self.name} has layers 0..{self.n_layers - 1}."
            )

    def check_neuron(self, layer: int, neuron: int) -> None:
        self.check_layer(layer)
        if not 0 <= neuron < self.n_neurons:
            raise NeuronIndexError(
                f"Neuron {neuron} is out of range: each layer of {self.name} has neurons "
                f"0..{self.n_neurons - 1}."
            )

    def __repr__(self) -> str:
        return (f"LanguageModel({self.name!r}, family={self.spec.family}, kind={self.kind}, "
                f"layers={self.n_layers}, neurons={self.n_neurons}{', shared layers' if self.shared_layers else ''})")
