"""Which facts a model knows: the first answer token ranks in its top ``k`` for most of the fact's prompts.

Example:
    >>> kept, dropped = known_facts(lm, builtin_facts())
    >>> len(kept), len(dropped)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Fact
from kneuron.models.language_model import LanguageModel


def _rank_input(lm: LanguageModel, query: EncodedQuery) -> tuple[torch.Tensor, int]:
    """The ids to run and the position to read: a causal LM needs nothing after the predicting position."""
    if lm.kind == "causal":
        return query.input_ids[: query.position + 1], query.position
    return query.input_ids, query.position


def _logits(lm: LanguageModel, input_ids: torch.Tensor, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at ``positions``; for a causal LM (whose position is the last one) only the last row is computed."""
    if lm.kind == "causal":
        try:
            logits = lm.model(input_ids=input_ids, logits_to_keep=1).logits
            return logits, torch.zeros(len(positions), dtype=torch.long, device=logits.device)
        except TypeError:  # an older or custom model without logits_to_keep
            pass
    logits = lm.model(input_ids=input_ids).logits
    return logits, torch.tensor(positions, device=logits.device)


@torch.no_grad()
def answer_ranks(lm: LanguageModel, facts: Sequence[Fact], batch_size: int = 32) -> list[list[int]]:
    """Rank (0 = top-1) of each prompt's first answer token, per fact, in the order of ``facts`` and prompts.

    Prompts are grouped by token length and run in batches without padding, so results equal one-by-one runs.
    On a busy machine, ``torch.set_num_threads(1)`` can be several times faster than more threads (all 444
    built-in facts: 526 s on two threads at load average 9; a 40-fact sample took 13 s on one thread and
    103 s on two).

    Raises:
        FactError: a prompt the model cannot read (e.g. a causal model and a template that starts with [Y]).
    """
    ranks: list[list[int]] = [[0] * len(fact.templates) for fact in facts]
    groups: dict[int, list[tuple[int, int, torch.Tensor, int, int]]] = defaultdict(list)
    for f, fact in enumerate(facts):
        for p, prompt in enumerate(fact.prompts()):
            query = encode(lm, prompt, fact.object)
            ids, position = _rank_input(lm, query)
            groups[len(ids)].append((f, p, ids, position, query.answer_ids[0]))
    for _, items in sorted(groups.items()):
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            input_ids = torch.stack([item[2] for item in chunk]).to(lm.device)
            logits, positions = _logits(lm, input_ids, [item[3] for item in chunk])
            rows = torch.arange(len(chunk), device=logits.device)
            scores = logits[rows, positions].float()  # (batch, vocab)
            targets = torch.tensor([item[4] for item in chunk], device=logits.device)
            target_scores = scores.gather(1, targets[:, None])
            counts = (scores > target_scores).sum(dim=1)
            for (f, p, *_), count in zip(chunk, counts.tolist(), strict=True):
                ranks[f][p] = int(count)
    return ranks


def known_share(ranks: Sequence[int], top: int = 10) -> float:
    """Share of prompts whose first answer token ranks in the top ``top``."""
    return sum(rank < top for rank in ranks) / len(ranks) if ranks else 0.0


def known_facts(lm: LanguageModel, facts: Sequence[Fact], top: int = 10, min_share: float = 0.5,
                batch_size: int = 32) -> tuple[list[Fact], list[Fact]]:
    """Split ``facts`` into (known, dropped).

    A fact is known when the first token of its answer is among the model's ``top`` next-token (or
    mask-filler) predictions for more than ``min_share`` of its prompts.
    """
    kept, dropped = [], []
    for fact, ranks in zip(facts, answer_ranks(lm, facts, batch_size=batch_size), strict=True):
        (kept if known_share(ranks, top) > min_share else dropped).append(fact)
    return kept, dropped
