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

Both kinds of model run the whole input in one forward pass. A causal model could read the prompt before the
answer position from a key/value cache, as integrated gradients does for its many rows; for one pass that costs
a second forward, and on SmolLM2-135M's 4-12-token prompts one pass of the whole input was 25% faster (at these
sizes every forward is bound by reading the weights, whatever the number of tokens).

Neither a zero baseline nor a completeness gap is computed (both stay NaN): they belong to the integral, which
this estimator does not take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch

from kneuron.attribution.step_rows import (
    Objective,
    _answer_log_probs,
    _answer_ranks,
    _forward_logits,
    frozen_parameters,
    objective_of,
)
from kneuron.attribution.types import NeuronScores
from kneuron.errors import KneuronError
from kneuron.facts.encoding import EncodedQuery
from kneuron.models.hooks import on_ffn_input
from kneuron.models.language_model import LanguageModel


def gradient_times_activation(
    lm: LanguageModel,
    queries: Sequence[EncodedQuery],
    *,
    objective: Objective = "prob",
    layers: Sequence[int] | None = None,
    answer: str | None = None,
    on_prompt: Callable[[int, NeuronScores], None] | None = None,
) -> list[NeuronScores]:
    """Gradient × activation of every FFN neuron for each encoded prompt (one forward and backward each).

    ``layers`` limits the scored layers (the others score 0); ``answer`` is the text recorded in the results
    (default: the decoded answer tokens). The model is left as it was: hooks are removed and parameters'
    ``requires_grad`` flags restored on exit, also after an exception.
    """
    chosen = sorted(set(range(lm.n_layers) if layers is None else layers))
    for layer in chosen:
        lm.check_layer(layer)
    if not chosen:
        raise KneuronError("No layers to attribute: give at least one layer index.")
    objective_of(torch.zeros(1, 1, dtype=torch.float64), objective)  # checks the objective's name
    results = []
    with frozen_parameters(lm.model):
        for index, query in enumerate(queries):
            said = answer if answer is not None else lm.tokenizer.decode(list(query.answer_ids))
            scores = _one_prompt(lm, query, objective, chosen, said)
            results.append(scores)
            if on_prompt is not None:
                on_prompt(index, scores)
    return results


def _one_prompt(lm: LanguageModel, query: EncodedQuery, objective: Objective, chosen: list[int], answer: str,
                ) -> NeuronScores:
    device = lm.device
    step_ids, local = query.input_ids.to(device), query.position
    targets = list(query.target_positions)
    target_tensor = torch.tensor(targets, device=device)
    answer_ids = torch.tensor(query.answer_ids, device=device)
    activations: dict[int, torch.Tensor] = {}
    deltas: dict[int, torch.Tensor] = {}

    def adder(layer: int):
        def add(x: torch.Tensor) -> torch.Tensor:
            activations[layer] = x[0, local].detach()
            if layer not in chosen_set:
                return x
            deltas[layer] = torch.zeros_like(x[0, local]).requires_grad_(True)
            out = x.clone()
            out[0, local] = x[0, local] + deltas[layer]
            return out
        return add

    chosen_set = set(chosen)
    with torch.enable_grad(), ExitStack() as stack:
        for layer in range(lm.n_layers):
            stack.enter_context(on_ffn_input(lm, layer, adder(layer)))
        logits = _forward_logits(lm, step_ids[None], target_tensor[None], None)
        log_p = _answer_log_probs(logits, answer_ids[None]).sum(-1)
        grads = torch.autograd.grad(log_p.sum(), [deltas[layer] for layer in chosen])
    log_probability = float(log_p.detach().double()[0])
    value = float(objective_of(log_p.detach().double()[:, None], objective)[0])
    acts = torch.stack([activations[layer] for layer in range(lm.n_layers)])
    scores = torch.zeros(acts.shape, dtype=torch.float64, device=acts.device)
    factor = value if objective == "prob" else 1.0  # dP/da = P · dlogP/da, with P in float64
    for layer, grad in zip(chosen, grads, strict=True):
        scores[layer] = acts[layer].double() * grad.double() * factor
    nan = torch.full((lm.n_layers,), math.nan, dtype=torch.float64)
    return NeuronScores(
        scores=scores, activations=acts, probability=value, baseline=nan, completeness_gap=nan.clone(),
        prompt=query.text, answer=answer, position=query.position, steps=1, objective=objective, alphas="right",
        log_probability=log_probability, answer_ranks=_answer_ranks(logits.detach()[0], answer_ids),
        vocab_size=int(logits.shape[-1]), estimator="gxa")
