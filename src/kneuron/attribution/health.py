"""Whether a model's outputs are usable: finite logits, and a distribution that is not uniform.

A model whose clean forward pass gives non-finite logits (an overflowed weight, a broken conversion, an edit
saved with a huge lambda) makes every attribution meaningless: integrated gradients of NaN is NaN, or zero after
a norm swallows an infinity, and a run would store such facts "in 0.0 s of attribution" without a word. So
``find`` and ``run`` check first (:func:`check_finite`): one plain forward per prompt, and only when one is not
finite a second one with a forward hook on every block, to name the first layer where the values stop being
finite (or the embeddings, or the output head after the last block).

A *collapsed* output is one an edit can cause while staying finite: an infinity inside the residual stream that
the final RMSNorm divides away leaves all-equal logits, a uniform distribution over the vocabulary (every token at
1/V). :func:`collapsed` says whether a distribution is uniform to within :data:`UNIFORM_TOLERANCE`. ``find`` and
``run`` refuse such a model too (the issue's case: a model saved after a huge edit predicted every token at 1/V,
and a run stored its facts "in 0.0 s of attribution"), naming the first layer whose output is too large to
normalise: its mean square, what an RMSNorm or LayerNorm computes, overflows (:func:`first_too_large`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kneuron.errors import BrokenModelError
from kneuron.facts.encoding import EncodedQuery
from kneuron.models.language_model import LanguageModel

#: a distribution is collapsed when its most likely token has at most (1 + this) / V of the probability: uniform
#: but for float rounding (a trained model's top token has tens or hundreds of times 1/V; a tiny random one's, a
#: few times)
UNIFORM_TOLERANCE = 1e-3


def answer_logits(lm: LanguageModel, query: EncodedQuery) -> torch.Tensor:
    """The logits (float64, on the CPU) at each position that predicts an answer token: (answer tokens, vocab)."""
    with torch.no_grad():
        logits = lm.model(input_ids=query.input_ids[None].to(lm.device)).logits[0]
    return logits[list(query.target_positions)].detach().to("cpu", torch.float64)


def collapsed(logits: torch.Tensor) -> bool:
    """Whether every row of ``logits`` (finite) is a uniform distribution but for :data:`UNIFORM_TOLERANCE`."""
    probabilities = torch.softmax(logits.double(), dim=-1)
    vocab = probabilities.shape[-1]
    return bool((probabilities.amax(dim=-1) <= (1.0 + UNIFORM_TOLERANCE) / vocab).all())


def _first_where(lm: LanguageModel, query: EncodedQuery, bad: Callable[[torch.Tensor], bool]) -> str:
    """The first place of ``query``'s forward pass whose values are ``bad``: "the embeddings" (the first block's
    input), "layer l" (block l's output) or "the output head" (no block output is)."""
    seen: list[str] = []
    depth = [0]  # blocks run in depth order; a shared block (ALBERT) runs once per depth it serves

    def check(name: str, value: object) -> None:
        tensor = value[0] if isinstance(value, tuple) else value
        if not seen and isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and bad(tensor):
            seen.append(name)

    def after_block(_module, _args, output) -> None:
        check(f"layer {depth[0]}", output)
        depth[0] += 1

    handles = [lm.block(0).register_forward_pre_hook(lambda _m, args, kwargs: check(
        "the embeddings", args[0] if args else kwargs.get("hidden_states")), with_kwargs=True)]
    blocks = {id(lm.block(layer)): lm.block(layer) for layer in range(lm.n_layers)}
    handles += [block.register_forward_hook(after_block) for block in blocks.values()]
    try:
        answer_logits(lm, query)
    finally:
        for handle in handles:
            handle.remove()
    return seen[0] if seen else "the output head"


def first_non_finite(lm: LanguageModel, query: EncodedQuery) -> str:
    """Where ``query``'s forward pass first has a non-finite value: "the embeddings" (the first block's input),
    "layer l" (block l's output, the first that is not finite), or "the output head" (every block finite)."""
    return _first_where(lm, query, lambda tensor: not bool(torch.isfinite(tensor).all()))


def _too_large(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s mean square over its last dimension overflows (in float32 at least, as norms compute it),
    or a value is not finite: a norm after it divides it to zero or NaN."""
    wide = tensor if tensor.dtype == torch.float64 else tensor.float()
    return not bool(torch.isfinite(wide.pow(2).mean(-1)).all())


def first_too_large(lm: LanguageModel, query: EncodedQuery) -> str:
    """Where ``query``'s forward pass first has values too large to normalise (:func:`_too_large`): "the
    embeddings", "layer l" (block l's output) or "the output head" (no block output is)."""
    return _first_where(lm, query, _too_large)


def check_finite(lm: LanguageModel, queries: Sequence[EncodedQuery]) -> None:
    """Refuse a model whose clean forward pass gives a non-finite logit, or a uniform distribution
    (:func:`collapsed`), on any of ``queries``, naming the prompt and the first layer where its values stop being
    finite (or grow too large to normalise).

    Raises:
        BrokenModelError: one line, e.g. "... gives non-finite logits on 'The capital of France is': the values
            are first non-finite at layer 1 ...".
    """
    for query in queries:
        logits = answer_logits(lm, query)
        if not bool(torch.isfinite(logits).all()):
            where = first_non_finite(lm, query)
            raise BrokenModelError(
                f"{lm.name} gives non-finite logits on {query.text!r}: its values are first non-finite at {where}. "
                "Its weights are damaged (an overflowed edit or conversion?): load an intact copy of the model.")
        if collapsed(logits):
            top = float(torch.softmax(logits, dim=-1).max())
            where = first_too_large(lm, query)
            raise BrokenModelError(
                f"{lm.name} predicts a uniform distribution on {query.text!r} (every token at {top:.4g} of a "
                f"{logits.shape[-1]}-token vocabulary): its values first grow too large to normalise (their mean "
                f"square overflows) at {where}. Its weights are damaged (an overflowed edit or conversion?): load an "
                "intact copy of the model.")
