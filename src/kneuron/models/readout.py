"""The model's path from its final residual stream to its logits, as parts: the final norm (its weight and bias),
an optional linear map before the head (OPT's ``project_out``), the output head and the factor the model multiplies
its logits by. Where each family keeps them is in :mod:`kneuron.models.architectures`; this module only reads them.

Two readers share it: the direct readout of the log-probability increase (:func:`kneuron.attribution.
log_prob_increase.readout_of`, which adds the biases and the frozen norm scale) and the vocabulary projection of a
value slot (:mod:`kneuron.interventions.vocabulary`, which keeps only the linear part a direction goes through).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kneuron.errors import VocabularyError
from kneuron.models.architectures import final_norm_of, head_projection_of, logit_multiplier
from kneuron.models.language_model import LanguageModel


@dataclass(frozen=True)
class OutputHead:
    """The parts between the final residual stream and the logits (tensors in the dtype asked for).

    Attributes:
        head: the output head (``get_output_embeddings()``), one ``nn.Linear`` (vocabulary × width).
        norm: the final norm module, or None (a masked LM's spec names none; OPT built without it).
        projection: the linear map between the norm and the head, or None.
        gamma: what the norm multiplies by (``norm_weight_offset + weight``; ones where it has no weight or there
            is no norm), (hidden,).
        beta: the norm's bias, or None.
        centred: the norm is a LayerNorm (it subtracts the mean before scaling).
        rms: the norm is an RMSNorm (divides by the root mean square).
        multiplier: what the model multiplies its logits by (Cohere's ``logit_scale``, 1 / Granite's
            ``logits_scaling``; 1 for most families).
    """

    head: nn.Linear
    norm: nn.Module | None
    projection: nn.Module | None
    gamma: torch.Tensor
    beta: torch.Tensor | None
    centred: bool
    rms: bool
    multiplier: float


def linear_head(lm: LanguageModel) -> nn.Linear | None:
    """The model's output head when it is one linear layer (the unembedding), else None."""
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    return head if isinstance(head, nn.Linear) else None


@torch.no_grad()
def output_head(lm: LanguageModel, dtype: torch.dtype) -> OutputHead:
    """The model's :class:`OutputHead`, its tensors detached copies in ``dtype``.

    Raises:
        VocabularyError: the output head is not one linear layer.
    """
    head = linear_head(lm)
    if head is None:
        raise VocabularyError(f"{lm.name}'s output head is not one linear layer, so it has no unembedding matrix.")
    norm = final_norm_of(lm.spec, lm.model) if lm.spec.final_norm else None
    projection = head_projection_of(lm.spec, lm.model)
    hidden = projection.weight.shape[1] if projection is not None else head.weight.shape[1]
    gamma = torch.ones(hidden, dtype=dtype, device=head.weight.device)
    beta = None
    if norm is not None:
        weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
        if isinstance(weight, torch.Tensor):
            gamma = lm.spec.norm_weight_offset + weight.to(dtype)
        if isinstance(bias, torch.Tensor):
            beta = bias.to(dtype)
    config = getattr(lm.model, "config", None)
    return OutputHead(head, norm, projection, gamma, beta,
                      centred=norm is not None and lm.spec.final_norm_kind == "layernorm",
                      rms=lm.spec.final_norm_kind == "rmsnorm", multiplier=logit_multiplier(lm.spec, config))


__all__ = ["OutputHead", "linear_head", "output_head"]
