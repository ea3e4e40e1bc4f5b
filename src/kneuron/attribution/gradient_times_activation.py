"""Gradient × activation (attribution patching): the first-order estimate of every FFN neuron's effect, from one
forward and one backward pass per prompt.

For neuron i of layer l at the answer position, with w̄ its clean activation and y* the answer:

    score = w̄_i · ∂P(y*)/∂w_i   at the clean activations (α = 1 in every layer)

This is the integrand of the paper's integrated gradients at α = 1 times w̄, i.e. its one-point (α = 1) Riemann
sum: ``integrated_gradients(steps=1)`` gives the same numbers. The difference is the cost. Integrated gradients
scales one layer at a time, so its gradient with respect to layer l needs a pass in which only layer l is moved;
at α = 1 nothing is moved, so every layer's gradient comes from one backward pass of the clean prompt. Each layer
gets a zero ``delta`` added at the answer position (leaving the forward unchanged) and the gradient with respect
to the deltas is the gradient with respect to the activations, through every path to the output (later layers'
activations are not cut off: they stay functions of the earlier ones).

With ``objective="prob"`` the gradient is taken in log space, dP/da = P · dlogP/da with P in float64, as
integrated gradients does, so an answer with P below float32's range keeps its scores.

Both kinds of model run the whole input in one forward pass, several prompts to a batch (right-padded, see
:func:`gradient_times_activation`). A causal model could read the prompt before the answer position from a
key/value cache, as integrated gradients does for its many rows; for one pass that costs a second forward, and
on SmolLM2-135M's 4-12-token prompts one pass of the whole input was 25% faster. At these sizes a forward is
bound by reading the weights, whatever the number of tokens, which is also why batching the prompts pays.

Neither a zero baseline nor a completeness gap is computed: they belong to the integral, which this estimator does
not take (the baseline stays NaN, the completeness gap is None; :attr:`GradientTimesActivation.has_completeness`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch

from kneuron.attribution.estimator_base import Estimator, OnPrompt, PromptLike, encode_prompts, register_estimator
from kneuron.attribution.ffn_norm import NormRule, check_norm, effective_norm, frozen_deltas
from kneuron.attribution.limits import attributed_layers, out_of_memory_as_error
from kneuron.attribution.objective import (
    Objective,
    answer_token_log_probs,
    answer_token_ranks,
    check_objective,
    objective_of,
)
from kneuron.attribution.types import NeuronScores
from kneuron.facts.encoding import EncodedQuery, answer_text
from kneuron.facts.known import right_padded
from kneuron.models.hooks import on_ffn_input
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import at_targets, frozen_parameters, logits_at

#: at most this many tokens (prompts x padded length) per forward and backward pass
BATCH_TOKENS = 512
#: the settings that shrink gradient x activation's batches, as an out-of-memory message names them
LOWER_GXA = (f"batch_tokens (default {BATCH_TOKENS}: prompts x tokens per pass), or a run's chunk_facts "
             "(--chunk-facts)")


def gradient_times_activation(
    lm: LanguageModel,
    prompts: PromptLike | Sequence[PromptLike],
    answer: str | None = None,
    *,
    objective: Objective = "prob",
    layers: Sequence[int] | None = None,
    on_prompt: OnPrompt | None = None,
    batch_tokens: int = BATCH_TOKENS,
    norm: NormRule | None = None,
) -> list[NeuronScores]:
    """Gradient × activation of every FFN neuron for each prompt, in the order of ``prompts`` (Prompts, texts or
    EncodedQuery objects, as :meth:`Estimator.attribute` takes them; plain prompts need ``answer``).

    Prompts run together: grouped by answer length, sorted by length and right-padded, up to ``batch_tokens``
    tokens per pass. Padding sits after every real token, so a causal model's positions cannot see it (no mask is
    passed, as in :mod:`kneuron.facts.known`) and a masked model gets an attention mask that hides it; rows are
    independent, so each row's gradient is its own prompt's (up to float rounding: a batch's composition changes
    the order of sums in its matrix products).

    ``layers`` limits the scored layers (the others score 0); ``answer`` is also the text recorded in the results
    (default: the decoded answer tokens). The model is left as it was: hooks are removed and parameters'
    ``requires_grad`` flags restored on exit, also after an exception.

    ``norm`` (models that normalise each FFN output, see :mod:`kneuron.attribution.ffn_norm`): with "frozen"
    (their default) each layer's gradient reaches the stream through its own post-FFN norm with the norm's factor
    held, and through later layers' live norms: the gradient of integrated gradients' α = 1 row with that rule.
    """
    queries = encode_prompts(lm, prompts, answer)
    chosen = attributed_layers(lm, layers)
    check_objective(objective)
    rule = effective_norm(lm, norm)
    results: list[NeuronScores | None] = [None] * len(queries)
    order = sorted(range(len(queries)), key=lambda i: (len(queries[i].answer_ids), len(queries[i].input_ids)))
    with frozen_parameters(lm.model):
        for group in _batches(queries, order, max(1, batch_tokens)):
            tried = (f"attributing a batch of {len(group)} prompt(s) of up to {len(queries[group[-1]].input_ids)} "
                     "tokens by gradient x activation")
            with out_of_memory_as_error(lm.device, tried, lower=LOWER_GXA):
                batch = _one_batch(lm, [queries[i] for i in group], objective, chosen, rule)
            for index, scores in zip(group, batch, strict=True):
                scores.answer = answer_text(lm, queries[index], answer)
                results[index] = scores
                if on_prompt is not None:
                    on_prompt(index, scores)
    return [r for r in results if r is not None]


def _batches(queries: Sequence[EncodedQuery], order: list[int], tokens: int) -> list[list[int]]:
    """Consecutive runs of ``order`` with one answer length and at most ``tokens`` padded tokens each."""
    groups: list[list[int]] = []
    for index in order:
        group = groups[-1] if groups else None
        if group is not None and len(queries[group[0]].answer_ids) == len(queries[index].answer_ids) \
                and (len(group) + 1) * len(queries[index].input_ids) <= tokens:
            group.append(index)
        else:
            groups.append([index])
    return groups


def _one_batch(lm: LanguageModel, queries: list[EncodedQuery], objective: Objective, chosen: list[int],
               rule: NormRule | None = None) -> list[NeuronScores]:
    device = lm.device
    ids, mask = right_padded(lm, [q.input_ids for q in queries])
    rows = torch.arange(len(queries), device=device)
    positions = torch.tensor([q.position for q in queries], device=device)
    targets = torch.tensor([list(q.target_positions) for q in queries], device=device)
    answer_ids = torch.tensor([list(q.answer_ids) for q in queries], device=device)
    activations: dict[int, torch.Tensor] = {}
    deltas: dict[int, torch.Tensor] = {}
    chosen_set = set(chosen)

    def adder(layer: int):
        def add(x: torch.Tensor) -> torch.Tensor:
            activations[layer] = x[rows, positions].detach()
            if layer not in chosen_set:
                return x
            deltas[layer] = torch.zeros_like(x[rows, positions]).requires_grad_(True)
            if rule == "frozen":  # the delta enters after the FFN, through the norm with its factor held
                return x
            out = x.clone()
            out[rows, positions] = x[rows, positions] + deltas[layer]
            return out
        return add

    # a causal model gets no attention mask (see gradient_times_activation); a masked one hides the padding
    kwargs = {} if lm.kind == "causal" else {"attention_mask": mask.to(device)}
    with torch.enable_grad(), ExitStack() as stack:
        for layer in range(lm.n_layers):
            stack.enter_context(on_ffn_input(lm, layer, adder(layer)))
        if rule == "frozen":
            for layer in chosen:
                stack.enter_context(frozen_deltas(lm, layer, rows, positions, lambda layer=layer: deltas[layer]))
        sliced = stack.enter_context(logits_at(lm, targets))
        logits = lm.model(input_ids=ids.to(device), **kwargs).logits
        if not sliced:
            logits = at_targets(logits, targets)
        log_p = answer_token_log_probs(logits, answer_ids).sum(-1)
        grads = torch.autograd.grad(log_p.sum(), [deltas[layer] for layer in chosen])
    log_probabilities = log_p.detach().double()
    values = objective_of(log_probabilities[:, None], objective)
    acts = torch.stack([activations[layer] for layer in range(lm.n_layers)], dim=1)  # (rows, layers, neurons)
    by_layer = dict(zip(chosen, grads, strict=True))
    results = []
    for row, query in enumerate(queries):
        scores = torch.zeros(acts.shape[1:], dtype=torch.float64, device=acts.device)
        factor = float(values[row]) if objective == "prob" else 1.0  # dP/da = P · dlogP/da, with P in float64
        for layer, grad in by_layer.items():
            scores[layer] = acts[row, layer].double() * grad[row].double() * factor
        nan = torch.full((lm.n_layers,), math.nan, dtype=torch.float64)
        results.append(NeuronScores(
            scores=scores, activations=acts[row].clone(), probability=float(values[row]), baseline=nan,
            completeness_gap=None, prompt=query.text, position=query.position, steps=1, objective=objective,
            alphas="right", log_probability=float(log_probabilities[row]),
            answer_ranks=answer_token_ranks(logits.detach()[row], answer_ids[row]), vocab_size=int(logits.shape[-1]),
            estimator="gxa", norm=rule))
    return results


@register_estimator
class GradientTimesActivation(Estimator):
    """Attribution patching: activation × ∂objective/∂activation at the clean activations, every layer from one
    backward pass (:func:`gradient_times_activation`); the same numbers as one-point (α = 1) integrated gradients
    (with the same ``norm`` rule, see :class:`~kneuron.attribution.integrated_gradients.IntegratedGradients`).

    Example:
        >>> bag = GradientTimesActivation().attribute(lm, ["The capital of France is"], "Paris")
    """

    name = "gxa"

    def __init__(self, objective: Objective = "prob", *, norm: NormRule | None = None) -> None:
        self.objective = check_objective(objective)
        self.norm = check_norm(norm)

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name, "objective": self.objective,
                **({} if self.norm is None else {"norm": self.norm})}

    def attribute(self, lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None = None,
                  *, layers: Sequence[int] | None = None, on_prompt: OnPrompt | None = None,
                  ) -> list[NeuronScores]:
        return gradient_times_activation(lm, prompts, answer, objective=self.objective, layers=layers,
                                         on_prompt=on_prompt, norm=self.norm)


__all__ = ["BATCH_TOKENS", "GradientTimesActivation", "gradient_times_activation"]
