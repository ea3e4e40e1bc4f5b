"""The editing metrics and studies on tiny random models, checked against by-hand probabilities (the conftest's own
hook-free softmax) and for hygiene: weights restored, deterministic, rows well formed."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kneuron.errors import KneuronError
from kneuron.facts import Fact, encode
from kneuron.facts.counterfact import read_counterfact
from kneuron.interventions import erase_relation, update_fact
from kneuron.studies.editing import (
    STUDY,
    choose_new_answer,
    collateral,
    counterfact_edit,
    counterfact_scores,
    editing_study,
    erase_study,
    erase_summary,
    queries_of,
    score,
    update_metrics,
    update_summary,
)
from tiny_models import tiny_lm

from .conftest import probability_by_hand

FIXTURE = Path(__file__).parent.parent / "fixtures" / "counterfact.json"


def state(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def same_state(lm, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())


@pytest.fixture(params=["llama", "gpt2", "bert"])
def tiny(request):
    return tiny_lm(request.param, dtype=torch.float64, layers=3)


def mean_logprob_by_hand(lm, prompt, answer) -> float:
    query = encode(lm, prompt, answer)
    with torch.no_grad():
        logits = lm.model(input_ids=query.input_ids[None]).logits[0].double()
    return float(np.mean([float(torch.log_softmax(logits[p], -1)[t])
                          for p, t in zip(query.target_positions, query.answer_ids, strict=True)]))


def test_score_matches_by_hand(tiny, facts):
    fact = facts[2]  # Denmark -> Copenhagen, two tokens
    queries = queries_of(tiny, fact) + queries_of(tiny, facts[0])
    scores = score(tiny, queries, batch_size=2)
    prompts = [(p, fact.object) for p in fact.prompts()] + [(p, facts[0].object) for p in facts[0].prompts()]
    for i, (prompt, answer) in enumerate(prompts):
        assert scores.probability[i] == pytest.approx(probability_by_hand(tiny, prompt, answer), rel=1e-9)
        assert scores.mean_logprob[i] == pytest.approx(mean_logprob_by_hand(tiny, prompt, answer), rel=1e-9)
        query = queries[i]
        with torch.no_grad():
            top = int(tiny.model(input_ids=query.input_ids[None]).logits[0, query.position].argmax())
        assert scores.top1[i] == top and scores.hit[i] == (top == query.answer_ids[0])
    assert np.allclose(scores.log_ppl, -scores.mean_logprob)


def test_update_metrics_by_hand(tiny, facts):
    fact = facts[0]
    edit = update_fact(tiny, [(1, i) for i in range(0, 32, 3)], "Paris", "Rome", lambda_new=30.0, fact=fact)
    before = state(tiny)
    got = update_metrics(tiny, edit, fact, "Rome")
    assert same_state(tiny, before)
    prompts = fact.prompts()
    old_b = [probability_by_hand(tiny, p, "Paris") for p in prompts]
    new_b = [probability_by_hand(tiny, p, "Rome") for p in prompts]
    with edit.applied(tiny):
        old_a = [probability_by_hand(tiny, p, "Paris") for p in prompts]
        new_a = [probability_by_hand(tiny, p, "Rome") for p in prompts]
        top_a = score(tiny, queries_of(tiny, fact, "Rome"))
    beats = np.array(new_a) > np.array(old_a)
    assert got["p_old_before"] == pytest.approx(np.mean(old_b)) and got["p_new_after"] == pytest.approx(np.mean(new_a))
    assert got["p_old_after"] == pytest.approx(np.mean(old_a)) and got["p_new_before"] == pytest.approx(np.mean(new_b))
    assert got["new_beats_old"] == pytest.approx(beats.mean())
    assert got["new_beats_old_before"] == pytest.approx((np.array(new_b) > np.array(old_b)).mean())
    assert got["top1_new"] == pytest.approx(top_a.hit.mean())
    assert got["success"] == float(beats.mean() > 0.5) and got["prompts"] == len(prompts)
    assert math.isnan(got["changed"]) or 0 <= got["changed"] <= 1


def test_collateral_by_hand(tiny, facts):
    others = facts[3:5]
    queries = [q for f in others for q in queries_of(tiny, f)]
    before = score(tiny, queries)
    edit = erase_relation(tiny, {(1, i): 1 for i in range(16)}, top=16)
    with edit.applied(tiny):
        after = score(tiny, queries)
    got = collateral(before, after)
    assert got["p_change"] == pytest.approx(np.mean((after.probability - before.probability) / before.probability))
    assert got["log_ppl_before"] == pytest.approx(-before.mean_logprob.mean())
    assert got["log_ppl_after"] == pytest.approx(-after.mean_logprob.mean())
    right = before.hit
    expected = after.hit[right].mean() if right.any() else math.nan
    assert got["top1_kept"] == pytest.approx(expected, nan_ok=True)


def test_choose_new_answer(facts):
    lm = tiny_lm("llama")
    new = choose_new_answer(lm, facts[0], facts)
    assert new in {"Berlin", "Copenhagen"}
    assert choose_new_answer(lm, facts[0], facts) == new  # seeded by the fact id
    assert choose_new_answer(lm, facts[0], facts[:1]) is None  # no other answer in the relation
    # an answer sharing the first token is never chosen
    same_start = [Fact("Denmark", "capital", "Copenhagen", facts[0].templates),
                  Fact("Sweden", "capital", "Copen", facts[0].templates)]
    assert choose_new_answer(lm, same_start[0], same_start) is None


def test_editing_study_rows(facts, neurons):
    lm = tiny_lm("gpt2", layers=3)
    before = state(lm)
    rows = editing_study(lm, facts, neurons, n_other=2, lambda_new=20.0)
    assert same_state(lm, before)
    assert rows == editing_study(lm, facts, neurons, n_other=2, lambda_new=20.0)  # deterministic
    assert {r["study"] for r in rows} == {STUDY} and {r["variant"] for r in rows} == {"kn", "random"}
    edited = {(r["variant"], r["fact_id"]): r["value"] for r in rows if r["metric"] == "edited"}
    assert len(edited) == 2 * len(facts)
    # L0.N3 is a knowledge neuron of every fact: shared (> 10% of each relation's facts), so it is left out
    for fact in facts:
        if edited["kn", fact.id]:
            count = next(r["value"] for r in rows if r["fact_id"] == fact.id and r["variant"] == "kn"
                         and r["metric"] == "neurons")
            assert count == len(neurons[fact.id]) - 1
            random_count = next(r["value"] for r in rows if r["fact_id"] == fact.id and r["variant"] == "random"
                                and r["metric"] == "neurons")
            assert random_count == count
    metrics = {r["metric"] for r in rows if r["variant"] == "kn"}
    assert {"success", "new_beats_old", "top1_new", "intra_log_ppl_after", "inter_p_change"} <= metrics
    summary = update_summary(rows, "kn")
    assert summary["facts"] == len(facts) and 0 <= summary["success"] <= 1
    assert summary["intra_delta_ppl"] == pytest.approx(summary["intra_ppl_after"] - summary["intra_ppl_before"])
    assert math.isfinite(summary["inter_delta_ppl"])


def test_editing_study_slot_norm_variant_and_bad_variant(facts, neurons):
    lm = tiny_lm("llama", layers=3)
    rows = editing_study(lm, facts[:3], neurons, variants=("kn",), scale="slot_norm", n_other=1)
    assert {r["variant"] for r in rows} == {"kn_slot_norm"}
    with pytest.raises(KneuronError, match="variant"):
        editing_study(lm, facts, neurons, variants=("all",))


def test_editing_study_skips_facts_it_cannot_edit(facts):
    lm = tiny_lm("llama")
    only_shared = {f.id: [(0, 3)] for f in facts}  # every neuron shared: nothing left to edit
    rows = editing_study(lm, facts, only_shared, variants=("kn",), n_other=1)
    assert {r["metric"] for r in rows} == {"edited"} and all(r["value"] == 0 for r in rows)
    assert update_summary(rows)["edited"] == 0
    with pytest.raises(KneuronError, match="out of range"):  # a real error is not swallowed
        editing_study(lm, facts, {f.id: [(7, 0)] for f in facts}, variants=("kn",), n_other=1)


def test_erase_study(facts, neurons):
    lm = tiny_lm("bert", layers=3)
    before = state(lm)
    rows = erase_study(lm, facts, "capital", neurons, top=2, n_other=3)
    assert same_state(lm, before)
    assert {r["variant"] for r in rows} == {"erase_zero", "erase_random_zero"}
    own = {r["fact_id"] for r in rows if r["metric"] == "own_p_change"}
    assert own == {f.id for f in facts if f.relation == "capital"}
    assert len({r["fact_id"] for r in rows if r["metric"] == "other_p_change"}) == 3
    # one value by hand: the first capital fact's probability change, averaged over its prompts
    fact = facts[0]
    counts = {(0, 3): 3}
    counts.update({k.key: 1 for f in facts[:3] for k in neurons[f.id] if k.key != (0, 3)})
    edit = erase_relation(lm, counts, top=2)
    p_before = [probability_by_hand(lm, p, fact.object) for p in fact.prompts()]
    with edit.applied(lm):
        p_after = [probability_by_hand(lm, p, fact.object) for p in fact.prompts()]
    got = next(r["value"] for r in rows if r["variant"] == "erase_zero" and r["fact_id"] == fact.id
               and r["metric"] == "own_p_change")
    assert got == pytest.approx(np.mean((np.array(p_after) - p_before) / np.array(p_before)), rel=1e-4)
    summary = erase_summary(rows, "erase_zero")
    assert summary["neurons"] == 2 and summary["own_facts"] == 3 and summary["other_facts"] == 3
    assert summary["own_ppl_change"] == pytest.approx(summary["own_ppl_after"] / summary["own_ppl_before"] - 1)
    with pytest.raises(KneuronError, match="No fact"):
        erase_study(lm, facts, "nothing", neurons)


def test_counterfact_scores_by_hand():
    lm = tiny_lm("llama", dtype=torch.float64)
    record = read_counterfact(FIXTURE)[1]  # France: Paris -> Rome, in the tiny vocabulary
    plain = counterfact_scores(lm, record)

    def margin(prompt, a, b):
        return mean_logprob_by_hand(lm, prompt, a) - mean_logprob_by_hand(lm, prompt, b)

    assert plain["efficacy"] == float(margin(record.rewrite_prompt, "Rome", "Paris") > 0)
    assert plain["efficacy_diff"] == pytest.approx(margin(record.rewrite_prompt, "Rome", "Paris"))
    para = [margin(p, "Rome", "Paris") > 0 for p in record.paraphrase_prompts]
    assert plain["paraphrase"] == pytest.approx(np.mean(para))
    neigh = [margin(p, t, "Rome") > 0 for p, t in record.neighborhood_prompts]
    assert plain["neighborhood"] == pytest.approx(np.mean(neigh))
    edit = counterfact_edit(lm, record, [(1, i) for i in range(32)], lambda_new=50.0)
    assert edit.meta["old"] == "Paris" and edit.meta["new"] == "Rome"
    before = state(lm)
    edited = counterfact_scores(lm, record, edit)
    assert same_state(lm, before)
    assert {k.removesuffix("_before"): v for k, v in edited.items() if k.endswith("_before")} == plain
    with edit.applied(lm):
        assert edited["efficacy_diff"] == pytest.approx(margin(record.rewrite_prompt, "Rome", "Paris"))


def test_counterfact_neighbourhood_targets_and_empty_prompts():
    lm = tiny_lm("gpt2")
    record = read_counterfact(FIXTURE)[2]  # neighbourhood prompts with their own targets; no attribute prompts
    scores = counterfact_scores(lm, record)
    assert 0 <= scores["neighborhood"] <= 1 and 0 <= scores["paraphrase"] <= 1
    empty = read_counterfact(FIXTURE)[1].__class__(**{**read_counterfact(FIXTURE)[1].__dict__,
                                                      "paraphrase_prompts": ()})
    assert math.isnan(counterfact_scores(lm, empty)["paraphrase"])


def test_report_section(facts, neurons):
    from kneuron.report.editing import editing_section

    assert "Not run" in editing_section([])
    lm = tiny_lm("llama", layers=3)
    rows = editing_study(lm, facts[:4], neurons, n_other=1, sign="activation")
    rows += erase_study(lm, facts, "capital", neurons, top=2, n_other=2)
    html = editing_section(rows)
    assert "<h3>Updating facts</h3>" in html and "Erasing a relation: capital" in html
    assert "knowledge neurons, sign of the activation" in html and "paper: knowledge neurons" in html
    assert "34.4%" in html and "erase_random_zero" in html and "<script" not in html


@pytest.fixture(scope="module")
def studied_rows():
    """Update (signed) and erase rows of a tiny model with the aggregates the runner stores for them."""
    from kneuron.studies.catalog.editing import Editing
    from kneuron.studies.intervals import aggregate_rows
    from studies.conftest import tiny_facts, tiny_neurons

    facts = tiny_facts()
    neurons = tiny_neurons(facts)
    lm = tiny_lm("llama", layers=3)
    rows = editing_study(lm, facts, neurons, n_other=1, sign="activation", lambda_new=20.0)
    rows += erase_study(lm, facts, "capital", neurons, top=2, n_other=2)
    return rows, aggregate_rows(rows, Editing.controls)


#: (variant, metric, percent, signed) of the figures checked against their stored aggregate
CHECKED = (("kn_signed", "top1_new", True, False), ("kn_signed", "intra_p_change", True, True),
           ("random_signed", "new_beats_old", True, False), ("kn_signed", "neurons", False, False),
           ("erase_zero", "own_p_change", True, True), ("erase_zero", "other_top1_after", True, False),
           ("erase_random_zero", "own_p_change", True, True))


def stored_text(aggregates, variant, metric, percent, signed):
    from dataclasses import replace

    from kneuron.studies.intervals import find, format_interval

    stored = find(aggregates, variant, metric)
    assert stored.n, (variant, metric)
    return format_interval(replace(stored, control=""), percent=percent, signed=signed), stored


def test_summary_and_report_show_the_stored_intervals(studied_rows):
    """Each mean over facts the terminal summary (at 80 columns) and the report show is the stored aggregate's
    interval, n and paired p against the control the study declares, not a bare mean."""
    import html as escape

    from kneuron.report.editing import editing_section
    from kneuron.studies.editing_summary import format_summary

    rows, aggregates = studied_rows
    text = format_summary(rows, aggregates, width=80)
    page = editing_section(rows, aggregates)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for variant, metric, percent, signed in CHECKED:
        shown, stored = stored_text(aggregates, variant, metric, percent, signed)
        assert "[" in shown and f"n = {stored.n}" in shown
        assert f" {shown} " in text, (shown, text)  # whole, not wrapped
        assert escape.escape(shown) in page
        if variant in ("kn_signed", "erase_zero"):  # the study's measures have their control's paired p
            assert stored.control in ("random_signed", "erase_random_zero") and math.isfinite(stored.p)
            assert f"p = {stored.p:.2g}" in shown
        else:
            assert not math.isfinite(stored.p) and "p =" not in shown
    assert "update kn_signed: " in text and "p vs random_signed" in text
    assert "erase_zero: 2 neurons erased; p vs erase_random_zero" in text
    # an atlas studied before aggregates were stored: the bare mean with its n and what to re-run
    old = format_summary(rows, (), width=200)
    assert "no interval stored (re-run `kneuron study editing`)" in old
    assert not re.search(r"\[[−+]?\d+\.\d+, ", old)
    assert "no interval stored" in editing_section(rows)
