"""What every estimator measures: the answer's objective, from the logits at the answer positions.

The objective of an attribution is the joint probability of the answer's tokens ("prob", the paper's) or its log
("logprob"), teacher-forced: each answer token's log-probability is read at the position that predicts it
(:func:`answer_token_log_probs`), and their sum is the joint log-probability (:func:`objective_of`). The same
logits give each answer token's rank (:func:`answer_token_ranks`), which results report so that an answer the model
never predicts can be flagged. Integrated gradients, gradient × activation and the log-probability increase all
read their objective through these functions, so they agree on it exactly.
"""

from __future__ import annotations

from typing import Literal

import torch

from kneuron.errors import InputError
from kneuron.facts.encoding import at_least_float32

Objective = Literal["prob", "logprob"]
#: the objectives, the default first
OBJECTIVES: tuple[str, ...] = ("prob", "logprob")


def check_objective(objective: str) -> Objective:
    """``objective`` if it is one of :data:`OBJECTIVES`; an :class:`~kneuron.errors.InputError` otherwise."""
    if objective not in OBJECTIVES:
        raise InputError(f"Unknown objective {objective!r}: use 'prob' or 'logprob'.")
    return objective  # type: ignore[return-value]


def objective_of(log_probs: torch.Tensor, objective: Objective) -> torch.Tensor:
    """(rows, answer tokens) log-probabilities → the objective per row."""
    total = log_probs.sum(-1)
    if objective == "prob":
        return total.exp()
    if objective == "logprob":
        return total
    raise InputError(f"Unknown objective {objective!r}: use 'prob' or 'logprob'.")


def answer_token_log_probs(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """(rows, answer tokens) log-probabilities of ``answer_ids`` ((rows or 1, answer tokens)) under the (rows,
    answer tokens, vocabulary) ``logits`` at the answer positions (half types are computed in float32)."""
    log_probs = torch.log_softmax(at_least_float32(logits), dim=-1)
    return log_probs.gather(-1, answer_ids.to(logits.device).expand(logits.shape[0], -1)[..., None]).squeeze(-1)


def answer_token_ranks(logits: torch.Tensor, answer_ids: torch.Tensor) -> tuple[int, ...]:
    """Each answer token's rank (1 = the most likely) among the (answer tokens, vocabulary) ``logits`` at its
    position; tokens with equal logits share the best rank."""
    logits = at_least_float32(logits)
    own = logits.gather(-1, answer_ids.to(logits.device)[:, None])
    return tuple(int(r) + 1 for r in (logits > own).sum(-1).tolist())


__all__ = ["OBJECTIVES", "Objective", "answer_token_log_probs", "answer_token_ranks", "check_objective",
           "objective_of"]
