"""Scoring an edit: the answer probabilities, log-perplexities and top-1 hits on a fact's prompts before and after an
edit (the editing and edit robustness studies' metrics), and ROME's CounterFact scores.

:func:`score` runs queries in batches of equal length (no padding, so each probability is the one a single forward
gives); :func:`update_metrics` turns before/after scores of a fact's prompts into the editing study's metrics (see
:mod:`kneuron.studies.editing`); :func:`collateral` measures the damage on other facts' prompts.

**CounterFact** (Meng et al. 2022): :func:`counterfact_scores` gives efficacy (P(new) > P(true) on the rewrite
prompt), paraphrase (the same on paraphrase prompts) and neighbourhood (P(true) > P(new) on other subjects' prompts)
scores; as in ROME, answers are compared by their mean per-token log-probability.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kneuron.attribution.types import Neuron
from kneuron.facts.counterfact import CounterFactRecord
from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Fact, Prompt
from kneuron.interventions.edits import Edit
from kneuron.interventions.update import NeuronKey, update_fact
from kneuron.models.language_model import LanguageModel

# ------------------------------------------------------------------------------------------------ scoring

@dataclass(frozen=True)
class Scores:
    """Per query: the answer's joint probability, its mean per-token log-probability, the top-1 token id at the
    position predicting the answer's first token, and that first token's id."""

    probability: np.ndarray
    mean_logprob: np.ndarray
    top1: np.ndarray
    first: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        """Top-1 is the answer's first token."""
        return self.top1 == self.first

    @property
    def log_ppl(self) -> np.ndarray:
        """Negative mean per-token log-probability (log-perplexity of the answer)."""
        return -self.mean_logprob

    def __len__(self) -> int:
        return len(self.probability)


def _equal_length_batches(items: Sequence[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices of ``items`` (1-D id tensors) in batches of equal length (no padding), in a stable order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(items):
        groups[int(ids.shape[0])].append(i)
    return [members[start:start + batch_size] for _, members in sorted(groups.items())
            for start in range(0, len(members), batch_size)]


@torch.no_grad()
def score(lm: LanguageModel, queries: Sequence[EncodedQuery], *, batch_size: int = 32) -> Scores:
    """:class:`Scores` of ``queries``, batched by token length without padding (equal to one-by-one runs)."""
    n = len(queries)
    prob, mean, top1 = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    first = np.array([q.answer_ids[0] for q in queries], dtype=np.int64)
    for batch in _equal_length_batches([q.input_ids for q in queries], batch_size):
        chosen = [queries[i] for i in batch]
        logits = lm.model(input_ids=torch.stack([q.input_ids for q in chosen]).to(lm.device)).logits
        for r, (i, query) in enumerate(zip(batch, chosen, strict=True)):
            positions = torch.tensor(query.target_positions, device=logits.device)
            answer = torch.tensor(query.answer_ids, device=logits.device)
            log_probs = torch.log_softmax(logits[r, positions].double(), dim=-1).gather(-1, answer[:, None])
            prob[i], mean[i] = float(log_probs.sum().exp()), float(log_probs.mean())
            top1[i] = int(logits[r, query.position].argmax())
    return Scores(prob, mean, top1, first)


def queries_of(lm: LanguageModel, fact: Fact, answer: str | None = None) -> list[EncodedQuery]:
    """Every prompt of ``fact`` encoded with ``answer`` (default its object)."""
    return [encode(lm, prompt, answer or fact.object) for prompt in fact.prompts()]


def mean_of(values: np.ndarray) -> float:
    """The mean of ``values``; NaN for an empty array."""
    return float(values.mean()) if len(values) else math.nan


def share_of(mask: np.ndarray) -> float:
    """The share of True in ``mask``; NaN for an empty one."""
    return float(np.mean(mask)) if len(mask) else math.nan


# --------------------------------------------------------------------------------------------- update metrics

def update_metrics(lm: LanguageModel, edit: Edit, fact: Fact, new: str, *, old: str | None = None,
                   before: tuple[Scores, Scores] | None = None) -> dict[str, float]:
    """The update's effect on the fact's own prompts (see the module docstring for each metric).

    ``before`` may pass the clean (old, new) scores when already computed.
    """
    old = old or fact.object
    q_old, q_new = queries_of(lm, fact, old), queries_of(lm, fact, new)
    b_old, b_new = before or (score(lm, q_old), score(lm, q_new))
    with edit.applied(lm):
        a_old, a_new = score(lm, q_old), score(lm, q_new)
    said_old = b_old.hit
    beats, top1_new = a_new.probability > a_old.probability, a_new.hit
    return {
        "p_old_before": float(b_old.probability.mean()), "p_old_after": float(a_old.probability.mean()),
        "p_new_before": float(b_new.probability.mean()), "p_new_after": float(a_new.probability.mean()),
        "new_beats_old_before": share_of(b_new.probability > b_old.probability),
        "new_beats_old": share_of(beats),
        "top1_old_before": share_of(said_old), "top1_old_after": share_of(a_old.hit),
        "top1_new_before": share_of(b_new.hit), "top1_new": share_of(top1_new),
        "changed": share_of(~a_old.hit[said_old]) if said_old.any() else math.nan,
        "success": float(share_of(beats) > 0.5), "success_top1": float(share_of(top1_new) > 0.5),
        "prompts": float(len(q_old)),
    }


def collateral(before: Scores, after: Scores) -> dict[str, float]:
    """Damage on other facts' prompts (each with its own correct answer), before -> after."""
    right = before.hit
    return {
        "p_change": float(np.mean((after.probability - before.probability) / before.probability)),
        "log_ppl_before": float(before.log_ppl.mean()), "log_ppl_after": float(after.log_ppl.mean()),
        "top1_kept": share_of(after.hit[right]) if right.any() else math.nan,
    }


class CleanScores:
    """Clean (unedited) scores of facts' correct answers, computed once per fact."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm, self.queries, self.scores = lm, {}, {}

    def of(self, facts: Sequence[Fact]) -> tuple[list[EncodedQuery], Scores]:
        missing = [f for f in facts if f.id not in self.scores]
        for f in missing:
            self.queries[f.id] = queries_of(self.lm, f)
        if missing:
            flat = [q for f in missing for q in self.queries[f.id]]
            joined = score(self.lm, flat)
            start = 0
            for f in missing:
                end = start + len(self.queries[f.id])
                self.scores[f.id] = Scores(*(x[start:end] for x in (joined.probability, joined.mean_logprob,
                                                                      joined.top1, joined.first)))
                start = end
        queries = [q for f in facts for q in self.queries[f.id]]
        parts = [self.scores[f.id] for f in facts]
        return queries, Scores(*(np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0)
                                 for name in ("probability", "mean_logprob", "top1", "first")))


def collateral_values(lm: LanguageModel, edit: Edit, clean: CleanScores,
                      groups: Sequence[tuple[str, Sequence[Fact]]]) -> dict[str, float]:
    """:func:`collateral` of ``edit`` on each non-empty group of other facts, its metrics prefixed by the group's
    tag (``intra_p_change``, ...): clean scores from ``clean`` (computed once per fact), edited ones with the edit
    applied. What the editing study and the edit-methods study measure on the facts around an edit."""
    values: dict[str, float] = {}
    for tag, others in groups:
        if others:
            queries, before = clean.of(others)
            with edit.applied(lm):
                after = score(lm, queries)
            values |= {f"{tag}_{k}": v for k, v in collateral(before, after).items()}
    return values

# ----------------------------------------------------------------------------------------------------- CounterFact

def _causal_prompt(lm: LanguageModel, text: str) -> Prompt:
    if lm.kind == "causal":
        return Prompt.from_text(text)
    return Prompt.from_template(text.rstrip() + " [Y].")


def _compare(lm: LanguageModel, prompts: Sequence[str], first: Sequence[str] | str, second: str) -> np.ndarray:
    """Mean per-token log-probability of ``first`` minus that of ``second`` on each prompt."""
    if not prompts:
        return np.zeros(0)
    firsts = [first] * len(prompts) if isinstance(first, str) else list(first)
    parsed = [_causal_prompt(lm, p) for p in prompts]
    a = score(lm, [encode(lm, p, answer) for p, answer in zip(parsed, firsts, strict=True)])
    b = score(lm, [encode(lm, p, second) for p in parsed])
    return a.mean_logprob - b.mean_logprob


def counterfact_scores(lm: LanguageModel, record: CounterFactRecord, edit: Edit | None = None) -> dict[str, float]:
    """CounterFact's efficacy, paraphrase and neighbourhood scores of ``record`` (shares of prompts, 0..1), with
    ``edit`` applied when given (the same keys with ``_before`` are the unedited model's).

    * ``efficacy``: P(new) > P(true) on the rewrite prompt;
    * ``paraphrase``: the share of paraphrase prompts where P(new) > P(true);
    * ``neighborhood``: the share of neighbourhood prompts where P(neighbour's answer) > P(new);
    * ``*_diff``: the mean log-probability margin behind each.
    Answers are compared by mean per-token log-probability, as in ROME; NaN where the record has no prompts.
    """
    def measure() -> dict[str, float]:
        eff = _compare(lm, [record.rewrite_prompt], record.target_new, record.target_true)
        par = _compare(lm, list(record.paraphrase_prompts), record.target_new, record.target_true)
        neighbours = list(record.neighborhood_prompts)
        nei = _compare(lm, [p for p, _ in neighbours], [t for _, t in neighbours], record.target_new)
        return {"efficacy": share_of(eff > 0), "paraphrase": share_of(par > 0), "neighborhood": share_of(nei > 0),
                "efficacy_diff": mean_of(eff), "paraphrase_diff": mean_of(par), "neighborhood_diff": mean_of(nei)}

    before = measure()
    if edit is None:
        return before
    with edit.applied(lm):
        after = measure()
    return after | {f"{k}_before": v for k, v in before.items()}


def counterfact_edit(lm: LanguageModel, record: CounterFactRecord, neurons: Iterable[Neuron | NeuronKey],
                     **options) -> Edit:
    """The knowledge-neuron update of a CounterFact record: ``target_true`` -> ``target_new`` on ``neurons``."""
    fact = record.fact()
    return update_fact(lm, neurons, record.target_true, record.target_new, fact=fact,
                       prompt=_causal_prompt(lm, record.rewrite_prompt), **options)

