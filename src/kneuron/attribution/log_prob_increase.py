"""Log-probability increase ("lpi"): how much one neuron's value, read out directly, raises the answer's
log-probability (Yu & Ananiadou, "Neuron-Level Knowledge Attribution in Large Language Models", EMNLP 2024).

For neuron i of layer l at the answer position, with a_i its clean activation and w_i its value slot
(``lm.value_slot(l, i)``, the column of the FFN output projection it multiplies):

    v_i = m · a_i · w_i                  the neuron's contribution to the block's output
    h   = block output − m · FFN output  the residual stream the FFN output is added to, at that position
    Imp = log p(w | h + v_i) − log p(w | h)

with m the factor by which the block multiplies its FFN output (Granite's ``residual_multiplier``; 1 elsewhere:
:func:`~kneuron.models.architectures.ffn_output_multiplier`), w the **first** answer token and
p(w | x) = softmax(readout(x))[w]. Only the first token: the readout at the answer position predicts the token after
it, and later answer tokens sit at later positions, which this direct readout does not reach (their probabilities
depend on the neuron only through attention). ``h`` is exact for every block whose output is
``stream + m · FFN output`` with the FFN output added as it is: sequential pre-norm blocks (stream = input +
attention output) and parallel-residual ones (stream = input + attention output of the same input) alike; the FFN
output includes its bias, so ``h`` excludes it and ``h + v_i`` holds one neuron's value.

The readout, as in the authors' code (their ``get_bsvalues`` with ``final_var`` taken from the last layer's output):

    readout(x) = softcap(U · Proj · (γ ⊙ P x / r + β) + b)

* r is the final norm's scale **frozen** at its value on the model's clean final residual stream x_L (the norm's
  input) at the answer position: RMSNorm's sqrt(mean(x_L²) + eps), LayerNorm's sqrt(var(x_L) + eps) (biased
  variance), with eps as the module has it (:func:`~kneuron.models.architectures.norm_epsilon`);
* P centres the vector for a LayerNorm (x − mean(x)) and is the identity for an RMSNorm;
* γ is the norm's weight (``1 + weight`` for Gemma's RMSNorm, 1 where the norm has none, e.g. OLMo), β its bias
  (0 where it has none);
* Proj is a linear map between the norm and the head when the model has one (OPT's ``project_out``), U and b the
  output head's weight and bias (GPT-J's and Phi's heads have one), times the factor the model multiplies its
  logits by (Cohere's ``logit_scale``, 1 / Granite's ``logits_scaling``; 1 elsewhere:
  :func:`~kneuron.models.architectures.logit_multiplier`);
* softcap(z) = c · tanh(z / c) when ``config.final_logit_softcapping`` = c is set, else z.

A model without a final norm (OPT built with ``_remove_final_layer_norm``) reads out through the head alone (r = 1,
P = I, γ = 1, β = 0). Where each model keeps these is in :mod:`kneuron.models.architectures`; the estimator refuses
models it does not define (:func:`~kneuron.models.architectures.direct_readout_problem`: masked LMs, blocks that
norm the FFN output before the residual such as Gemma 2/3 and OLMo 2, post-norm OPT) and checks, on every prompt,
that the readout of x_L reproduces the model's own logits.

**Cost.** With r frozen the pre-softcap logits are affine in x, so

    readout_pre(h + v_i) = readout_pre(h) + (a_i / r) · M[:, i],   M = U · Proj · diag(γ) · P · W_l

and M (vocabulary × neurons) does not depend on the prompt. :func:`log_prob_increase` builds it once per layer and
call, in chunks of neurons (``memory_budget``), and reuses each chunk for every prompt of the call; per prompt it
then needs one log-sum-exp over the vocabulary per neuron (Imp = δ_w − logsumexp(log p(·|h) + δ), δ = a_i M[:, i] / r,
exact algebra without the cancellation of two large log-sum-exps). Building M costs 2·V·d·N multiply-adds per layer
(V vocabulary, d hidden, N neurons), the per-prompt part V·N exponentials per layer: for a small model with a large
vocabulary this is *not* cheaper than integrated gradients (see the benchmark figures in the notes of issue #12).
Forward passes only, one per prompt; no autograd.

The computation is in the model's dtype, at least float32; scores are returned as float64. ``probability`` is the
clean joint probability of the whole answer (objective "prob", as integrated gradients reports it); the baseline stays
NaN and the completeness gap None (they belong to the integral; :attr:`LogProbIncrease.has_completeness`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kneuron.attribution.estimator_base import Estimator, OnPrompt, PromptLike, encode_prompts, register_estimator
from kneuron.attribution.limits import attributed_layers, out_of_memory_as_error
from kneuron.attribution.limits import memory_budget as parse_budget
from kneuron.attribution.objective import answer_token_log_probs, answer_token_ranks
from kneuron.attribution.types import NeuronScores
from kneuron.errors import KneuronError
from kneuron.facts.encoding import EncodedQuery, answer_text
from kneuron.models.architectures import direct_readout_problem, ffn_output_multiplier, norm_epsilon
from kneuron.models.hooks import on_ffn_input
from kneuron.models.language_model import LanguageModel
from kneuron.models.readout import linear_head, output_head

#: bytes the (vocabulary × neuron-chunk) work matrices may take at once, by default
DEFAULT_MEMORY_BUDGET = 192 * 2**20
#: the setting that shrinks the work matrices, as an out-of-memory message names it
LOWER_LPI = ("memory_budget (of the estimator: the vocabulary x neurons work matrices), or a run's chunk_facts "
             "(--chunk-facts)")
#: work matrices of one chunk alive at once (M, with room to spare)
_MATRICES_PER_CHUNK = 5
#: neurons whose log-sum-exp is taken together: (group × vocabulary) temporaries stay in the CPU cache (measured
#: 1.6× faster than one pass over a whole chunk on SmolLM2's 49152-token vocabulary)
_GROUP = 16


@dataclass
class Readout:
    """The frozen-scale readout of one model: readout_pre(x) = U · (γ ⊙ P x) / r + c (see the module docstring)."""

    unembed: torch.Tensor  # U · Proj, (vocabulary, hidden)
    gamma: torch.Tensor  # (hidden,)
    constant: torch.Tensor  # U · Proj · β + b, (vocabulary,)
    centred: bool  # LayerNorm: P subtracts the mean
    rms: bool  # RMSNorm (else LayerNorm, or no norm at all)
    eps: float | None  # None: no final norm (r = 1)
    softcap: float | None
    norm: nn.Module | None  # the final norm module (its input is the final residual stream)

    def scale(self, stream: torch.Tensor) -> torch.Tensor:
        """r of each row of ``stream`` (..., hidden): the final norm's scale on it."""
        if self.eps is None:
            return torch.ones(stream.shape[:-1], dtype=stream.dtype, device=stream.device)
        spread = stream.pow(2).mean(-1) if self.rms else stream.var(-1, unbiased=False)
        return torch.sqrt(spread + self.eps)

    def centre(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return x - x.mean(dim, keepdim=True) if self.centred else x

    def logits(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Pre-softcap logits of each row of ``x`` (rows, hidden) with frozen scales ``r`` (rows,)."""
        return (self.centre(x) * self.gamma / r[:, None]) @ self.unembed.T + self.constant

    def capped(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.softcap is None else self.softcap * torch.tanh(logits / self.softcap)


def _compute_dtype(lm: LanguageModel) -> torch.dtype:
    return torch.float64 if lm.dtype == torch.float64 else torch.float32


def readout_of(lm: LanguageModel) -> Readout:
    """The model's frozen-scale readout, or a KneuronError saying why the direct readout is not defined for it."""
    config = getattr(lm.model, "config", None)
    problem = direct_readout_problem(lm.spec, config)
    if problem is None and lm.shared_layers:  # its hooks on the blocks would see every depth's forward
        problem = "one block runs at several depths (shared layers), which the readout's block hooks do not tell apart"
    if problem is not None:
        raise KneuronError(f"The log-probability increase (lpi) cannot score {lm.name}: {problem}; use "
                           "--estimator gxa or ig instead.")
    if linear_head(lm) is None:
        raise KneuronError(f"The log-probability increase (lpi) cannot score {lm.name}: its output head is not one "
                           "linear layer; use --estimator gxa or ig instead.")
    dtype = _compute_dtype(lm)
    parts = output_head(lm, dtype)
    norm, projection, gamma, beta = parts.norm, parts.projection, parts.gamma, parts.beta
    with torch.no_grad():
        unembed = parts.head.weight.to(dtype)
        bias = parts.head.bias
        constant = bias.to(dtype) if bias is not None else torch.zeros(unembed.shape[0], dtype=dtype,
                                                                         device=unembed.device)
        if projection is not None:
            if beta is not None:
                constant = constant + unembed @ (projection.weight.to(dtype) @ beta)
                beta = None
            if getattr(projection, "bias", None) is not None:
                constant = constant + unembed @ projection.bias.to(dtype)
            unembed = unembed @ projection.weight.to(dtype)
        if beta is not None:
            constant = constant + unembed @ beta
        multiplier = parts.multiplier
        if multiplier != 1.0:
            unembed, constant = unembed * multiplier, constant * multiplier
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return Readout(unembed, gamma, constant, centred=parts.centred, rms=parts.rms,
                   eps=None if norm is None else norm_epsilon(lm.spec, norm),
                   softcap=float(softcap) if softcap else None, norm=norm)


@dataclass
class _Clean:
    """One prompt's clean pass: what the scores need."""

    activations: torch.Tensor  # (layers, neurons) at the answer position, model dtype
    streams: torch.Tensor  # (layers, hidden) h of each layer, compute dtype
    scale: torch.Tensor  # r, 0-d
    first_token: int
    log_probability: float
    answer_ranks: tuple[int, ...]
    vocab_size: int


def _at_position(x: torch.Tensor, position: int) -> torch.Tensor:
    """Row ``position`` of one sequence's (1, seq, ...) tensor, or of a flattened (seq, ...) one (OPT's FFN)."""
    return x[position] if x.dim() == 2 else x[0, position]


@contextmanager
def _clean_recorders(lm: LanguageModel, position: int, readout: Readout, store: dict) -> Any:
    """Record, at ``position``: each layer's activations, FFN output and block output, and the final norm's input."""
    handles = []

    def on_block(layer: int):
        def hook(_module, _args, out):
            store["block", layer] = _at_position(out[0] if isinstance(out, tuple) else out, position).clone()
        return hook

    def on_ffn_out(layer: int):
        def hook(_module, _args, out):  # cloned now: Falcon adds the attention output into it in place
            store["ffn", layer] = _at_position(out, position).clone()
        return hook

    def on_norm(_module, args):
        store["final"] = _at_position(args[0], position).clone()

    def on_activation(layer: int):
        def record(x: torch.Tensor) -> None:
            store["act", layer] = x[0, position].detach().clone()
        return record

    with ExitStack() as stack:
        try:
            for layer in range(lm.n_layers):
                handles.append(lm.block(layer).register_forward_hook(on_block(layer)))
                handles.append(lm.ffn_out(layer).register_forward_hook(on_ffn_out(layer)))
                stack.enter_context(on_ffn_input(lm, layer, on_activation(layer)))
            if readout.norm is not None:
                handles.append(readout.norm.register_forward_pre_hook(on_norm))
            yield
        finally:
            for handle in handles:
                handle.remove()


def _clean_pass(lm: LanguageModel, query: EncodedQuery, readout: Readout) -> _Clean:
    dtype = readout.unembed.dtype
    ids = query.input_ids.to(lm.device)
    position = query.position
    store: dict = {}
    with _clean_recorders(lm, position, readout, store):
        logits = lm.model(input_ids=ids[None]).logits[0]
    targets = torch.tensor(query.target_positions, device=logits.device)
    answer_ids = torch.tensor(query.answer_ids, device=logits.device)
    at_targets = logits[targets]
    log_p = float(answer_token_log_probs(at_targets[None], answer_ids[None]).double().sum())
    added = ffn_output_multiplier(lm.spec, lm.model.config)
    streams = torch.stack([store["block", layer].to(dtype) - added * store["ffn", layer].to(dtype)
                           for layer in range(lm.n_layers)])
    final = store["final"].to(dtype) if readout.norm is not None else None
    scale = readout.scale(final) if final is not None else torch.ones((), dtype=dtype, device=streams.device)
    if final is not None:
        _check_readout(lm, readout, final, scale, at_targets[0])
    return _Clean(torch.stack([store["act", layer] for layer in range(lm.n_layers)]), streams, scale,
                  int(query.answer_ids[0]), log_p, answer_token_ranks(at_targets, answer_ids), int(logits.shape[-1]))


def _check_readout(lm: LanguageModel, readout: Readout, final: torch.Tensor, scale: torch.Tensor,
                   model_logits: torch.Tensor) -> None:
    """Refuse a readout that does not give the model's own logits at the clean final stream (a wrong spec)."""
    ours = readout.capped(readout.logits(final[None], scale[None]))[0]
    theirs = model_logits.to(ours.dtype)
    tolerance = 1e-4 if lm.dtype in (torch.float32, torch.float64) else 5e-2
    gap = float((ours - theirs).abs().max())
    if not gap <= tolerance * (1 + float(theirs.abs().max())):
        raise KneuronError(
            f"The final norm and head that the {lm.spec.family!r} spec describes do not reproduce {lm.name}'s "
            f"logits (largest difference {gap:.3g}): fix its ArchSpec final_norm, final_norm_kind, "
            "norm_weight_offset or logit_multiplier / logit_divisor, or use --estimator gxa or ig.")


def _value_slots(lm: LanguageModel, layer: int, dtype: torch.dtype) -> torch.Tensor:
    """(hidden, neurons): column i is what neuron i adds to the stream per unit of activation (its value slot, times
    the block's FFN output multiplier)."""
    weight = lm.ffn_out(layer).weight
    slots = (weight if lm.spec.layout == "linear" else weight.T).to(dtype)
    added = ffn_output_multiplier(lm.spec, lm.model.config)
    return slots if added == 1.0 else slots * added


def chunk_size(vocab: int, neurons: int, dtype: torch.dtype, memory_budget: int) -> int:
    """Neurons per chunk so that the chunk's (vocabulary × chunk) work matrices fit in ``memory_budget`` bytes."""
    per_neuron = _MATRICES_PER_CHUNK * vocab * torch.finfo(dtype).bits // 8
    return max(1, min(neurons, memory_budget // per_neuron))


def log_prob_increase(
    lm: LanguageModel,
    prompts: PromptLike | Sequence[PromptLike],
    answer: str | None = None,
    *,
    layers: Sequence[int] | None = None,
    on_prompt: OnPrompt | None = None,
    memory_budget: int | str | None = None,
) -> list[NeuronScores]:
    """The log-probability increase of every FFN neuron for each prompt (see the module docstring), in the order of
    ``prompts`` (Prompts, texts or EncodedQuery objects, as :meth:`Estimator.attribute` takes them).

    ``layers`` limits the scored layers (the others score 0); ``answer`` is the answer of plain prompts and the
    text recorded in the results (default: the decoded answer tokens); ``memory_budget`` (bytes, or e.g. "256MB")
    bounds the work matrices (default 192 MiB; it changes no score beyond float rounding). All prompts are scored
    together (each layer's matrix is shared by them), so ``on_prompt`` is called for each prompt at the end. The
    model is left as it was: every hook is removed on exit, also after an exception.
    """
    queries = encode_prompts(lm, prompts, answer)
    chosen = attributed_layers(lm, layers)
    readout = readout_of(lm)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else parse_budget(memory_budget)
    dtype = readout.unembed.dtype
    neurons = chunk_size(readout.unembed.shape[0], lm.n_neurons, dtype, budget)
    tried = f"scoring {len(queries)} prompt(s) by log-probability increase in chunks of {neurons} neurons"
    with torch.no_grad(), out_of_memory_as_error(lm.device, tried, budget=budget, lower=LOWER_LPI):
        cleans = [_clean_pass(lm, query, readout) for query in queries]
        scores = [torch.zeros(lm.n_layers, lm.n_neurons, dtype=torch.float64) for _ in queries]
        if cleans:
            _score_layers(lm, readout, cleans, chosen, scores, neurons)
    results = []
    for index, (query, clean, score) in enumerate(zip(queries, cleans, scores, strict=True)):
        said = answer_text(lm, query, answer)
        nan = torch.full((lm.n_layers,), math.nan, dtype=torch.float64)
        result = NeuronScores(
            scores=score, activations=clean.activations, probability=math.exp(clean.log_probability),
            baseline=nan, completeness_gap=None, prompt=query.text, answer=said, position=query.position,
            steps=1, objective="prob", alphas="right", log_probability=clean.log_probability,
            answer_ranks=clean.answer_ranks, vocab_size=clean.vocab_size, estimator="lpi")
        results.append(result)
        if on_prompt is not None:
            on_prompt(index, result)
    return results


def _score_layers(lm: LanguageModel, readout: Readout, cleans: list[_Clean], chosen: list[int],
                  scores: list[torch.Tensor], chunk: int) -> None:
    """Fill ``scores[p][layer]`` for every chosen layer: one (vocabulary × chunk) slice of M at a time, shared
    by every prompt."""
    dtype = readout.unembed.dtype
    scales = torch.stack([clean.scale for clean in cleans])
    words = torch.tensor([clean.first_token for clean in cleans], device=readout.unembed.device)
    for layer in chosen:
        streams = torch.stack([clean.streams[layer] for clean in cleans])
        base = readout.capped(readout.logits(streams, scales))  # (prompts, vocabulary): log p(. | h) from these
        base_log_p = torch.log_softmax(base, dim=-1)
        pre_base = readout.logits(streams, scales) if readout.softcap is not None else None
        slots = readout.centre(_value_slots(lm, layer, dtype), dim=0) * readout.gamma[:, None]
        for start in range(0, lm.n_neurons, chunk):
            stop = min(start + chunk, lm.n_neurons)
            matrix = slots[:, start:stop].T @ readout.unembed.T  # M[:, start:stop] transposed, (chunk, vocabulary)
            for p, clean in enumerate(cleans):
                coefficients = clean.activations[layer, start:stop].to(dtype) / scales[p]
                increase = torch.cat([_increase(readout, matrix[g:g + _GROUP] * coefficients[g:g + _GROUP, None],
                                                base_log_p[p], None if pre_base is None else pre_base[p],
                                                int(words[p]))
                                      for g in range(0, stop - start, _GROUP)])
                scores[p][layer, start:stop] = increase.double().cpu()


def _increase(readout: Readout, delta: torch.Tensor, base_log_p: torch.Tensor, pre_base: torch.Tensor | None,
              word: int) -> torch.Tensor:
    """Imp of a few neurons from their logit changes ``delta`` (neurons, vocabulary)."""
    if pre_base is None:
        return delta[:, word] - torch.logsumexp(base_log_p + delta, dim=-1)
    capped = readout.capped(pre_base + delta)  # soft-capping bends the logits: log-softmax of the capped sum
    return (capped[:, word] - torch.logsumexp(capped, dim=-1)) - base_log_p[word]


@register_estimator
class LogProbIncrease(Estimator):
    """The log-probability increase of Yu & Ananiadou (2024): each neuron's value slot read out directly through
    the frozen final norm and the head (:mod:`kneuron.attribution.log_prob_increase`), forward passes only.

    Args:
        memory_budget: bytes (or e.g. "256MB") the vocabulary × neuron work matrices may take; changes no score
            beyond float rounding.
    """

    name = "lpi"

    def __init__(self, memory_budget: int | str | None = None) -> None:
        self.memory_budget = memory_budget
        if memory_budget is not None:
            parse_budget(memory_budget)  # checks it

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name}

    def attribute(self, lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None = None,
                  *, layers: Sequence[int] | None = None, on_prompt: OnPrompt | None = None,
                  ) -> list[NeuronScores]:
        return log_prob_increase(lm, prompts, answer, layers=layers, on_prompt=on_prompt,
                                 memory_budget=self.memory_budget)


__all__ = ["DEFAULT_MEMORY_BUDGET", "LogProbIncrease", "Readout", "chunk_size", "log_prob_increase", "readout_of"]
