"""The answer probability and rank of many prompts in a few padded forward passes.

A run stores, for every prompt of every fact, the joint probability of the answer and the rank of its first token
(:func:`~kneuron.facts.encoding.answer_probability`). One forward pass per prompt, with the output head applied
at every position, cost more than a cheap estimator itself: on a 4-fact gradient x activation run of SmolLM2 it
was 63% of the compute (issue 24). :func:`answer_probability_many` gives the same values from batches:

* prompts sorted by length and right-padded (with the tokenizer's pad token), ``batch_size`` per pass;
* a masked model gets the padding's attention mask; a causal model gets none: every position read is a real
  token before the padding, which a causal model cannot see anyway, while a padding mask can leave a padded
  position with no key to attend to under a sliding window (Gemma 2/3), whose NaN then spreads to the row (as in
  :mod:`kneuron.facts.known`);
* the output head reads only each prompt's target positions (the positions that predict its answer tokens), so
  a pass holds (batch, answer tokens, vocabulary) logits instead of (batch, length, vocabulary).

The result equals :func:`answer_probability_one_by_one` (one pass per prompt) up to float rounding: tested in
float64 on tiny models of both kinds, with multi-token answers and prompts of several lengths.

Example:
    >>> queries = [encode(lm, prompt, fact.object) for prompt in fact.prompts()]
    >>> [p.probability for p in answer_probability_many(lm, queries)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kneuron.facts.encoding import AnswerProbability, EncodedQuery, answer_from_logits, answer_probability
from kneuron.facts.known import head_index, right_padded
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import logits_at

#: prompts per forward pass
BATCH_SIZE = 32


@torch.no_grad()
def answer_probability_many(lm: LanguageModel, queries: Sequence[EncodedQuery], *, batch_size: int = BATCH_SIZE,
                            ) -> list[AnswerProbability]:
    """:func:`~kneuron.facts.encoding.answer_probability` of each query, in order, from padded batches of
    ``batch_size`` prompts (see the module docstring)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    found: list[AnswerProbability | None] = [None] * len(queries)
    order = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = right_padded(lm, [queries[i].input_ids for i in chunk])
        index = head_index([queries[i].target_positions for i in chunk])
        kwargs = {} if lm.kind == "causal" else {"attention_mask": mask.to(lm.device)}
        with logits_at(lm, index) as sliced:
            logits = lm.model(input_ids=ids.to(lm.device), **kwargs).logits
        for row, i in enumerate(chunk):
            positions = list(range(len(queries[i].target_positions))) if sliced else list(
                queries[i].target_positions)
            found[i] = answer_from_logits(logits[row, positions], queries[i])
    return [p for p in found if p is not None]


def answer_probability_one_by_one(lm: LanguageModel, queries: Sequence[EncodedQuery]) -> list[AnswerProbability]:
    """:func:`answer_probability_many` the slow, obviously correct way: one forward pass per prompt (what a run did
    before; the reference of the tests and of ``benchmarks/bench_run_throughput.py``)."""
    return [answer_probability(lm, query) for query in queries]


__all__ = ["BATCH_SIZE", "answer_probability_many", "answer_probability_one_by_one"]
