"""Which facts a model knows: the first answer token ranks in its top ``k`` for most of the fact's prompts.

Example:
    >>> kept, dropped = known_facts(lm, builtin_facts())
    >>> len(kept), len(dropped)
    >>> known_facts(lm, builtin_facts()).skipped      # a masked model's vocabulary may lack answers: fact id -> why

Ranking runs the prompts in batches: sorted by length, right-padded (with an attention mask for a masked
model), and the output head applied only at the position that predicts the first answer token. Padding sits
after every real token, so a causal model's read position cannot see it and a masked model's mask hides it; the
ranks equal those of one forward pass per prompt (:func:`answer_ranks_one_by_one`, the reference the tests
compare against in float64) up to floating-point rounding, which can only swap two logits that are equal
to rounding (near-exact ties).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kneuron.errors import AnswerVocabularyError
from kneuron.facts.encoding import EncodedQuery, encode, encode_many
from kneuron.facts.fact import Fact
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import logits_at


def _rank_input(lm: LanguageModel, query: EncodedQuery) -> torch.Tensor:
    """The ids to run: a causal LM needs nothing after the position that predicts the first answer token."""
    return query.input_ids[: query.position + 1] if lm.kind == "causal" else query.input_ids


def pad_token_id(lm: LanguageModel) -> int:
    """The id right-padding uses: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(lm.tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0


def right_padded(lm: LanguageModel, rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` (1-D id tensors) right-padded with :func:`pad_token_id` into one (batch, longest) id tensor, and the
    attention mask that hides the padding (1 on real tokens), both on the CPU: the batches of the known filter,
    the stored probabilities, gradient x activation and the studies' measurements."""
    width = max(int(r.shape[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id(lm), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :r.shape[0]] = r
        mask[i, :r.shape[0]] = 1
    return ids, mask


def head_index(positions: Sequence[Sequence[int]]) -> torch.Tensor:
    """The (batch, longest) index :func:`~kneuron.models.partial_forward.logits_at` takes: each row's positions,
    the shorter ones repeating their last position (whose logits the caller then leaves unread)."""
    width = max(len(row) for row in positions)
    return torch.tensor([list(row) + [row[-1]] * (width - len(row)) for row in positions])


def _first_token_ranks(scores: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Rank of ``targets`` in each row of ``scores`` (batch, vocab): how many tokens score strictly higher."""
    scores = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    return (scores > scores.gather(1, targets[:, None])).sum(dim=1).tolist()


def _queries(lm: LanguageModel, facts: Sequence[Fact]) -> list[tuple[int, int, EncodedQuery]]:
    items = [(f, p, prompt, fact.object) for f, fact in enumerate(facts) for p, prompt in enumerate(fact.prompts())]
    queries = encode_many(lm, [(prompt, answer) for _, _, prompt, answer in items])
    return [(f, p, query) for (f, p, _, _), query in zip(items, queries, strict=True)]


@torch.no_grad()
def answer_ranks(lm: LanguageModel, facts: Sequence[Fact], batch_size: int = 64) -> list[list[int]]:
    """Rank (0 = top-1) of each prompt's first answer token, per fact, in the order of ``facts`` and prompts.

    Prompts run in batches of ``batch_size`` (see the module docstring); only one position per row reaches
    the output head, so memory grows with ``batch_size`` x prompt length x hidden size, not with the vocabulary.
    ``kneuron facts`` on 10,000 synthetic facts (30,000 prompts) of a tiny model: see
    ``benchmarks/bench_known_filter.py`` and the README for the measured speed-up over one pass per prompt.

    Raises:
        FactError: a prompt the model cannot read (e.g. a causal model and a template that starts with [Y]).
    """
    ranks: list[list[int]] = [[0] * len(fact.templates) for fact in facts]
    queries = _queries(lm, facts)
    inputs = [_rank_input(lm, query) for _, _, query in queries]
    order = sorted(range(len(queries)), key=lambda i: int(inputs[i].shape[0]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = right_padded(lm, [inputs[i] for i in chunk])
        positions = torch.tensor([queries[i][2].position for i in chunk])
        # A causal model gets no attention mask: its read position is the row's last real token, which cannot
        # attend to the padding after it anyway, while a padding mask can leave a padded position with no
        # key to attend to under a sliding window (Gemma 2/3), whose NaN then spreads to the whole row.
        kwargs = {} if lm.kind == "causal" else {"attention_mask": mask.to(lm.device)}
        with logits_at(lm, positions[:, None]) as sliced:
            logits = lm.model(input_ids=ids.to(lm.device), **kwargs).logits
        rows = torch.arange(len(chunk), device=logits.device)
        scores = logits[:, 0] if sliced else logits[rows, positions.to(logits.device)]
        targets = torch.tensor([queries[i][2].answer_ids[0] for i in chunk], device=logits.device)
        for i, rank in zip(chunk, _first_token_ranks(scores, targets), strict=True):
            f, p, _ = queries[i]
            ranks[f][p] = int(rank)
    return ranks


@torch.no_grad()
def answer_ranks_one_by_one(lm: LanguageModel, facts: Sequence[Fact]) -> list[list[int]]:
    """:func:`answer_ranks` the slow, obviously correct way: one encode and one forward pass per prompt."""
    ranks = []
    for fact in facts:
        fact_ranks = []
        for prompt in fact.prompts():
            query = encode(lm, prompt, fact.object)
            ids = _rank_input(lm, query)[None].to(lm.device)
            logits = lm.model(input_ids=ids).logits[0, query.position][None]
            target = torch.tensor([query.answer_ids[0]], device=logits.device)
            fact_ranks.append(int(_first_token_ranks(logits, target)[0]))
        ranks.append(fact_ranks)
    return ranks


def known_share(ranks: Sequence[int], top: int = 10) -> float:
    """Share of prompts whose first answer token ranks in the top ``top``."""
    return sum(rank < top for rank in ranks) / len(ranks) if ranks else 0.0


def encodable_facts(lm: LanguageModel, facts: Sequence[Fact]) -> tuple[list[Fact], dict[str, str]]:
    """(the facts whose answer ``lm`` can encode after each of their prompts, in order; fact id -> why for the
    others).

    A masked model cannot encode an answer its vocabulary lacks (it would be the unknown token; the tiny test
    models cannot spell 'Athens'): :class:`~kneuron.errors.AnswerVocabularyError`. Other encoding errors are the
    facts' own (e.g. a template with nothing before ``[Y]`` for a causal model, which
    :func:`~kneuron.facts.validation.causal_templates` filters) and are raised.
    """
    kept, skipped = [], {}
    for fact in facts:
        try:
            for prompt in fact.prompts():
                encode(lm, prompt, fact.object)
        except AnswerVocabularyError as exc:
            skipped[fact.id] = str(exc)
            continue
        kept.append(fact)
    return kept, skipped


class KnownSplit(tuple):
    """What :func:`known_facts` returns: the pair ``(known, dropped)`` (it unpacks as that pair), and ``skipped``,
    fact id -> why, for the facts whose answer the model cannot encode (in neither list)."""

    skipped: dict[str, str]

    def __new__(cls, known: list[Fact], dropped: list[Fact], skipped: dict[str, str]) -> KnownSplit:
        split = super().__new__(cls, (known, dropped))
        split.skipped = skipped
        return split

    @property
    def known(self) -> list[Fact]:
        return self[0]

    @property
    def dropped(self) -> list[Fact]:
        return self[1]


def known_facts(lm: LanguageModel, facts: Sequence[Fact], top: int = 10, min_share: float = 0.5,
                batch_size: int = 64) -> KnownSplit:
    """Split ``facts`` into (known, dropped), skipping the facts whose answer the model cannot encode.

    A fact is known when the first token of its answer is among the model's ``top`` next-token (or
    mask-filler) predictions for more than ``min_share`` of its prompts. A fact whose answer the model's
    vocabulary cannot spell (:func:`encodable_facts`: e.g. 'Athens' for a masked model without that word) is
    skipped: it is in neither list, and the result's ``skipped`` says why (fact id -> the error), so
    ``len(result.skipped)`` counts them.

    Raises:
        FactError: a prompt the model cannot read (e.g. a causal model and a template that starts with [Y]).
    """
    usable, skipped = encodable_facts(lm, facts)
    kept, dropped = [], []
    for fact, ranks in zip(usable, answer_ranks(lm, usable, batch_size=batch_size), strict=True):
        (kept if known_share(ranks, top) > min_share else dropped).append(fact)
    return KnownSplit(kept, dropped, skipped)
