"""The batched known-fact filter against one forward pass per prompt, and batched encoding against encode."""

from __future__ import annotations

import pytest
import torch

from kneuron.errors import FactError
from kneuron.facts import Fact, encode
from kneuron.facts.encoding import encode_many
from kneuron.facts.known import answer_ranks, answer_ranks_one_by_one
from tiny_models import FAMILIES, MULTI_TOKEN_WORDS, tiny_lm

TEMPLATES = ("The capital of [X] is [Y].", "[X]'s capital city is [Y].", "In [X] the capital is [Y].",
             "The old capital of the famous country [X] is [Y].", "[X] [Y]")
SUBJECTS = ("France", "Japan", "the Netherlands", "the old country of Italy and Spain", "Denmark", "Egypt")
ANSWERS = ("Paris", "Tokyo", *MULTI_TOKEN_WORDS, "the city of London")
FACTS = [Fact(subject, "capital", answer, TEMPLATES[: 2 + (i % 4)], id=f"f{i}")
         for i, (subject, answer) in enumerate(zip(SUBJECTS * 2, ANSWERS, strict=False))]


def test_the_facts_have_multi_token_answers_and_several_lengths():
    lm = tiny_lm("llama")
    queries = [encode(lm, p, f.object) for f in FACTS for p in f.prompts()]
    assert max(len(q.answer_ids) for q in queries) >= 3
    assert len({q.position for q in queries}) >= 6


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_batched_ranks_equal_one_by_one_in_float64(family, batch_size):
    lm = tiny_lm(family, dtype=torch.float64)
    expected = answer_ranks_one_by_one(lm, FACTS)
    assert answer_ranks(lm, FACTS, batch_size=batch_size) == expected
    assert len({r for ranks in expected for r in ranks}) > 5  # the ranks differ: the comparison means something


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_one_by_one_reference_matches_a_plain_argsort(family):
    """The reference itself: a rank is the first answer token's place in the sorted logits."""
    lm = tiny_lm(family, dtype=torch.float64)
    fact = FACTS[2]
    for prompt, rank in zip(fact.prompts(), answer_ranks_one_by_one(lm, [fact])[0], strict=True):
        query = encode(lm, prompt, fact.object)
        logits = lm.model(input_ids=query.input_ids[None]).logits[0, query.position]
        order = torch.argsort(logits, descending=True, stable=True).tolist()
        assert order.index(query.answer_ids[0]) == rank


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "roberta"])
def test_encode_many_equals_encode(family):
    lm = tiny_lm(family)
    items = [(p, f.object) for f in FACTS for p in f.prompts()]
    batched = encode_many(lm, items)
    for (prompt, answer), query in zip(items, batched, strict=True):
        single = encode(lm, prompt, answer)
        assert torch.equal(query.input_ids, single.input_ids)
        assert (query.answer_ids, query.target_positions, query.text) == (
            single.answer_ids, single.target_positions, single.text)


def test_encode_many_raises_the_first_error_of_the_loop():
    lm = tiny_lm("bert")
    bad = [Fact("France", "capital", "Xylophone", ("The capital of [X] is [Y].",)),  # [UNK] answer
           Fact("Japan", "capital", "Tokyo", ("[Y]",))]
    items = [(p, f.object) for f in FACTS[:2] + bad for p in f.prompts()]
    with pytest.raises(FactError) as loop:
        [encode(lm, p, a) for p, a in items]
    with pytest.raises(FactError) as batched:
        encode_many(lm, items)
    assert str(batched.value) == str(loop.value) and "Xylophone" in str(loop.value)
    causal = tiny_lm("llama")
    with pytest.raises(FactError, match="nothing before"):
        answer_ranks(causal, [FACTS[0], Fact("Japan", "capital", "Tokyo", ("[Y] is in [X].",))])


def test_ranking_leaves_no_hook_on_the_model():
    lm = tiny_lm("llama")
    head = lm.model.get_output_embeddings()
    before = dict(head._forward_pre_hooks)
    with pytest.raises(FactError):
        answer_ranks(lm, [FACTS[0], Fact("Japan", "capital", "Tokyo", ("[Y] is in [X].",))])
    answer_ranks(lm, FACTS[:2])
    assert dict(head._forward_pre_hooks) == before
    ids = encode(lm, FACTS[0].prompts()[0], "Paris").input_ids[None]
    assert lm.model(input_ids=ids).logits.shape[1] == ids.shape[1]  # the head reads every position again


def test_known_facts_skips_the_facts_a_masked_model_cannot_encode():
    """tiny-bert's vocabulary has no 'Athens' or 'Vienna': those built-in facts are skipped, not an error; the others
    are split exactly as answer_ranks ranks them."""
    from kneuron.facts import builtin_facts, known_facts
    from kneuron.facts.known import encodable_facts, known_share

    lm = tiny_lm("bert")
    facts = builtin_facts()
    split = known_facts(lm, facts, top=20)
    kept, dropped = split  # still unpacks as (known, dropped)
    assert split.skipped and {"capital:Greece", "capital:Austria"} <= set(split.skipped)
    assert all("vocabulary does not have" in why for why in split.skipped.values())
    encodable, reasons = encodable_facts(lm, facts)
    assert reasons == split.skipped and len(encodable) + len(reasons) == len(facts)
    assert [f.id for f in kept + dropped] == [f.id for f in facts if f.id not in reasons]  # in order, nothing lost
    by_id = {f.id: ranks for f, ranks in zip(encodable, answer_ranks(lm, encodable), strict=True)}
    assert all(known_share(by_id[f.id], 20) > 0.5 for f in kept)
    assert all(known_share(by_id[f.id], 20) <= 0.5 for f in dropped)
    causal = known_facts(tiny_lm("llama"), facts[:20])
    assert causal.skipped == {} and len(causal.known) + len(causal.dropped) == 20  # a causal model encodes all
