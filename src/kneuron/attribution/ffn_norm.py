"""Attribution through a normalised FFN output (Gemma 2 and 3, OLMo 2): the norm's scale held at its clean value.

These families pass each block's FFN output through an RMSNorm before adding it to the residual stream::

    stream += norm(W_down · a) = W_down · a / sqrt(mean((W_down · a)²) + eps) · (offset + weight)

An RMSNorm is scale-invariant: scaling a layer's activations ``a`` by α > 0 changes nothing after it (up to
``eps``). Taken literally, the paper's integral then collapses: P(α) is flat for α > 0 and jumps at α = 0, a
layer's scores sum to about zero instead of P(1) − P(0), and the Riemann sum is a multiple of activation ×
gradient at α = 1. With ``norm="frozen"`` (the default for these families) the norm's 1/RMS factor at the answer
position is held at its clean value (the value at α = 1) while α varies, so the FFN's contribution to the stream
is α times its clean contribution, as in every other family, and the integral keeps its meaning: as the steps
grow, a layer's scores sum to its own P(1) − P(0). This is the usual "freeze the normalisation" linearisation
(the direct-readout estimators freeze the final norm the same way). ``norm="live"`` keeps the literal
definition. Only the scaled layer's norm, at the answer position, is frozen: later layers' norms see the changed
stream and stay live, as in the literal integral. The zero baseline is the same either way (the norm of a zero
vector is zero).

Interventions are left live: suppressing neurons (setting them to 0) still changes the direction of the FFN's
output, so the norm does not undo it, and an amplified neuron changes the direction too; only a uniform scaling
of a whole layer is undone by the norm. A model without such a norm has nothing to freeze: ``effective_norm``
is None for it and the rules give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from torch import nn

from kneuron.errors import InputError, KneuronError
from kneuron.facts.encoding import at_least_float32
from kneuron.models.architectures import norm_epsilon
from kneuron.models.hooks import forward_hook
from kneuron.models.language_model import LanguageModel

NormRule = Literal["frozen", "live"]
#: the rules, the default first
NORM_RULES: tuple[str, ...] = ("frozen", "live")


def check_norm(norm: str | None) -> NormRule | None:
    """``norm`` if it is a rule (or None, the family's default); a one-line error otherwise."""
    if norm is not None and norm not in NORM_RULES:
        raise InputError(f"Unknown norm rule {norm!r}: use 'frozen' (hold a post-FFN norm's scale at its clean "
                         "value, the default) or 'live' (the literal definition).")
    return norm  # type: ignore[return-value]


def effective_norm(lm: LanguageModel, norm: str | None) -> NormRule | None:
    """The rule attribution uses on ``lm``: None when its blocks add the FFN output as it is (nothing to freeze),
    else ``norm`` or, by default, "frozen"."""
    norm = check_norm(norm)
    if lm.spec.ffn_output_norm is None:
        return None
    return norm or "frozen"


def freezes(lm: LanguageModel, norm: str | None) -> bool:
    """Whether attribution on ``lm`` with ``norm`` holds the post-FFN norms' scales."""
    return effective_norm(lm, norm) == "frozen"


def with_effective_norm(params: Mapping[str, Any], lm: LanguageModel) -> dict[str, Any]:
    """``params`` with ``"norm"`` set to the rule used on ``lm``, or without it when ``lm`` has no post-FFN norm
    (so an atlas of such a model records no norm, whatever was asked)."""
    out = dict(params)
    rule = effective_norm(lm, out.pop("norm", None))
    if rule is not None:
        out["norm"] = rule
    return out


def _norm_of(lm: LanguageModel, layer: int) -> nn.Module:
    module = lm.ffn_output_norm(layer)
    if module is None:
        raise KneuronError(f"{lm.name} has no norm after the FFN output; nothing to freeze.")
    return module


def inverse_rms(lm: LanguageModel, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm's factor 1 / sqrt(mean(x²) + eps) over the last axis, in float64."""
    x = x.double()
    return torch.rsqrt(x.pow(2).mean(-1) + norm_epsilon(lm.spec, norm))


def _gain(lm: LanguageModel, norm: nn.Module, like: torch.Tensor) -> torch.Tensor | float:
    """What the norm multiplies the normalised vector by, in ``like``'s dtype: ``offset + weight`` (the spec's
    ``norm_weight_offset``: 1 for Gemma's RMSNorm), or 1 for a norm without a weight."""
    weight = getattr(norm, "weight", None)
    if weight is None:
        return 1.0
    return lm.spec.norm_weight_offset + weight.detach().to(like.dtype)


@contextmanager
def recording_norm_scales(lm: LanguageModel, position: int, store: dict[int, float]) -> Iterator[None]:
    """Record each layer's post-FFN norm factor 1/RMS at ``position`` of the first row into ``store``."""
    def recorder(layer: int, norm: nn.Module):
        def record(_module, args):
            store[layer] = float(inverse_rms(lm, norm, args[0][0, position]))
        return record

    with ExitStack() as stack:
        for layer in range(lm.n_layers):
            norm = _norm_of(lm, layer)
            stack.enter_context(forward_hook(norm, recorder(layer, norm), pre=True))
        yield


def frozen_output(lm: LanguageModel, norm: nn.Module, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The norm's output for inputs ``x`` (rows, hidden) with the factor 1/RMS held at ``scale`` (rows,):
    ``x · scale · (offset + weight)``, computed in at least float32 as the norms themselves do."""
    wide = at_least_float32(x)
    return wide * scale.to(device=wide.device, dtype=wide.dtype)[:, None] * _gain(lm, norm, wide)


@contextmanager
def frozen_rows(lm: LanguageModel, layer: int, rows: torch.Tensor, positions: torch.Tensor,
                scales: torch.Tensor) -> Iterator[None]:
    """Within the block, ``layer``'s post-FFN norm outputs, at batch ``rows`` and their ``positions``, its input
    times the held factor ``scales`` (one per row) instead of its own 1/RMS; elsewhere it is untouched."""
    norm = _norm_of(lm, layer)

    def hook(_module, args, out):
        replaced = out.clone()
        picked = args[0][rows, positions]
        replaced[rows, positions] = frozen_output(lm, norm, picked, scales).to(out.dtype)
        return replaced

    with forward_hook(norm, hook):
        yield


def value_vectors(lm: LanguageModel, layer: int, activations: torch.Tensor) -> torch.Tensor:
    """What ``activations`` (rows, neurons) add through ``layer``'s FFN output projection, without its bias:
    the sum of each neuron's value slot times its activation."""
    weight = lm.ffn_out(layer).weight
    return activations @ (weight.t() if lm.spec.layout == "linear" else weight)


@contextmanager
def frozen_deltas(lm: LanguageModel, layer: int, rows: torch.Tensor, positions: torch.Tensor,
                  delta_of: Callable[[], torch.Tensor]) -> Iterator[None]:
    """For one backward pass at the clean point (gradient × activation): the deltas ``delta_of()`` (rows, neurons,
    zero; made during the forward pass) reach the stream through ``layer``'s post-FFN norm with its factor held
    (detached), while the clean FFN output keeps the live norm, through which earlier layers' gradients pass.
    Values are unchanged (the deltas are zero)."""
    norm = _norm_of(lm, layer)

    def hook(_module, args, out):
        picked = args[0][rows, positions]
        scale = inverse_rms(lm, norm, picked.detach())
        added = frozen_output(lm, norm, value_vectors(lm, layer, delta_of().to(picked.dtype)), scale)
        replaced = out.clone()
        replaced[rows, positions] = out[rows, positions] + added.to(out.dtype)
        return replaced

    with forward_hook(norm, hook):
        yield
