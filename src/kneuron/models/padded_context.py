"""Rows of causal prompts whose cached prefixes differ in length, in one batch.

A batch of step rows (:mod:`kneuron.attribution.step_rows`) reads a key/value cache of each prompt's prefix. Two
prompts of one fact ("The capital of France is", "France's capital city is") have prefixes of different lengths,
so their rows could not share a batch, and each prompt paid its own batches: each batch reads every weight of the
blocks it runs, forward and backward, however few its rows (on SmolLM2 on one CPU thread, about 0.1 s a batch
before any row is computed).

Here each prompt's cache is right-padded with zeros to the longest one, and every block gets, per batch row:

* the rotary position embeddings of the row's own positions (its prefix length + j for its j-th token), so that
  the row's queries and its new keys are rotated as in its own prompt (the cached keys already are);
* an additive attention mask that hides the padded slots and keeps the causal order of the row's own tokens.

The padded slots then take no weight in any softmax, and each row computes what it computes alone, up to float
rounding. Only models whose blocks take ``attention_mask`` and ``position_embeddings`` and whose model has a
``rotary_emb`` (the Llama family: Llama, Mistral, Qwen2/3, SmolLM, OLMo) with SDPA or eager attention qualify
(:func:`pads_contexts`); the others keep one batch per prefix length.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from kneuron.models.hooks import block_pre_hooks
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import hidden_from


def _rotary(lm: LanguageModel):
    inner = getattr(lm.model, "model", None)
    return getattr(inner, "rotary_emb", None)


def pads_contexts(lm: LanguageModel) -> bool:
    """Whether rows of prompts with prefixes of different lengths may share a batch on ``lm`` (see the module)."""
    if lm.kind != "causal" or lm.shared_layers or lm.spec.batch_head_inputs or lm.spec.ffn_output_norm is not None:
        return False
    if lm.spec.flat_tokens or _rotary(lm) is None:
        return False
    config = lm.model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False  # the mask given here is the full causal one: a window would be dropped
    parameters = inspect.signature(type(lm.block(0)).forward).parameters  # the class's: a run may wrap the instance's
    return "attention_mask" in parameters and "position_embeddings" in parameters


def pad_keys(states: torch.Tensor, length: int) -> torch.Tensor:
    """(rows, heads, tokens, dim) cached keys or values right-padded with zeros to ``length`` tokens."""
    missing = length - states.shape[-2]
    if missing == 0:
        return states
    return torch.cat([states, states.new_zeros(*states.shape[:-2], missing, states.shape[-1])], dim=-2)


@contextmanager
def padded_context_rows(lm: LanguageModel, start: int, contexts: Sequence[int], padded: int, tokens: int,
                        ) -> Iterator[None]:
    """Blocks ``start``.. run each batch row with its own prefix length ``contexts[k]`` (batch rows in order; the
    cache right-padded to ``padded`` tokens, :func:`pad_keys`): per row, the rotary embeddings of positions
    ``contexts[k] + j`` for its ``tokens`` tokens and a mask hiding slots ``contexts[k]..padded - 1``. A block that
    runs the first n rows gets the first n of each. Entered after the hooks that feed and append rows."""
    device, dtype = lm.device, lm.dtype
    lengths = torch.tensor(list(contexts), device=device)
    own = torch.arange(tokens, device=device)
    positions = lengths[:, None] + own  # (rows, tokens)
    slot = torch.arange(padded + tokens, device=device)
    in_prefix = slot[None, None, :] < lengths[:, None, None]  # (rows, 1, slots)
    causal = (slot[None, :] >= padded) & (slot[None, :] - padded <= own[:, None])  # (tokens, slots)
    allowed = in_prefix | causal[None]  # (rows, tokens, slots)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    cos, sin = _rotary(lm)(torch.empty(0, dtype=dtype, device=device), positions)

    def fit(_module, args, kwargs):
        rows = hidden_from(args, kwargs).shape[0]
        return args, {**kwargs, "attention_mask": mask[:rows, None], "position_embeddings": (cos[:rows], sin[:rows]),
                      "position_ids": positions[:rows]}

    with block_pre_hooks(lm, range(start, lm.n_layers), fit):
        yield


__all__ = ["pad_keys", "padded_context_rows", "pads_contexts"]
