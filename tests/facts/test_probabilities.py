"""Batched answer probabilities and ranks against one forward pass per prompt, in float64 on tiny models."""

from __future__ import annotations

import pytest
import torch

from facts.test_known import FACTS
from kneuron.facts import encode
from kneuron.facts.encoding import answer_probability
from kneuron.facts.probabilities import answer_probability_many, answer_probability_one_by_one
from tiny_models import EAGER_ONLY, FAMILIES, tiny_lm


@pytest.mark.parametrize(("family", "batch_size"),
                         [(family, 3) for family in FAMILIES] + [("llama", 32), ("bert", 32), ("gemma3", 32)])
def test_batched_probabilities_equal_one_pass_per_prompt_in_float64(family, batch_size):
    lm = tiny_lm(family, dtype=torch.float64)
    queries = [encode(lm, p, f.object) for f in FACTS for p in f.prompts()]
    expected = answer_probability_one_by_one(lm, queries)
    found = answer_probability_many(lm, queries, batch_size=batch_size)
    # eager attention (gpt_neo, gemma2, bloom) takes its softmax in float32, whose rounding depends on the width
    rel = 1e-6 if family in EAGER_ONLY else 1e-9
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        assert got.rank == want.rank
        assert got.probability == pytest.approx(want.probability, rel=rel, abs=1e-15)
        assert got.token_probabilities == pytest.approx(want.token_probabilities, rel=rel, abs=1e-15)
    # the comparison means something: multi-token answers, several lengths in a batch, ranks that differ
    assert max(len(q.answer_ids) for q in queries) >= 3 and len({len(q) for q in queries}) >= 4
    assert len({p.rank for p in expected}) > 3


def test_the_reference_is_answer_probability_and_no_hook_stays():
    lm = tiny_lm("llama", dtype=torch.float64)
    queries = [encode(lm, p, f.object) for f in FACTS[:2] for p in f.prompts()]
    assert answer_probability_one_by_one(lm, queries) == [answer_probability(lm, q) for q in queries]
    head = lm.model.get_output_embeddings()
    before = dict(head._forward_pre_hooks)
    answer_probability_many(lm, queries)
    assert dict(head._forward_pre_hooks) == before
    assert answer_probability_many(lm, []) == []
    with pytest.raises(ValueError, match="batch_size"):
        answer_probability_many(lm, queries, batch_size=0)
