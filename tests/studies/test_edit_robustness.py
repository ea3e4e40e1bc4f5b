"""Edits under Niu et al.'s tests on tiny random models: every number checked against a deep copy of the model with
the edit written into its weights by hand and scored with the conftest's hook-free softmax; the held-out refinement
against the atlas's refined sets and a hand-computed case; the model bit-identical afterwards, also after an
exception."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from kneuron.attribution import Neuron
from kneuron.facts import Fact, encode
from kneuron.facts.robustness import Aliases, OneToOne, RobustnessData
from kneuron.store import Atlas, run
from kneuron.studies import edit_robustness as er
from kneuron.studies.edit_robustness import (
    STUDY,
    coverage_notes,
    edit_robustness_study,
    held_out_neurons,
    held_out_split,
)
from kneuron.studies.edit_robustness_summary import format_summary, robustness_summary
from kneuron.studies.editing import choose_new_answer
from kneuron.studies.editing import score as editing_score
from tiny_models import tiny_lm

from .conftest import probability_by_hand, tiny_facts

#: tiny-vocabulary robustness data: capital is one-to-one; France has an alias, Italy two
DATA = RobustnessData(
    {"capital": OneToOne("capital", ("[X] is the capital of [Y].", "The capital city [X] is in [Y]."))},
    (Aliases("France", ("the French country",)), Aliases("Italy", ("the Italian country", "Rome country"))))
EXCLUDED = {(0, 3)}  # tiny_neurons' L0.N3 is in every fact: shared by the relation, left out of every update


def state(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def same_state(lm, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())


@pytest.fixture(params=["llama", "gpt2", "bert"])
def tiny(request):
    return tiny_lm(request.param, dtype=torch.float64, layers=3)


def edited_copy(lm, keys, old: str, new: str, prompt, signs=None):
    """A deep copy of ``lm`` with -e(old) + 8 e(new) (first tokens' output embeddings) added to each value slot."""
    twin = copy.deepcopy(lm)
    weight = lm.model.get_output_embeddings().weight.detach()
    old_id, new_id = encode(lm, prompt, old).answer_ids[0], encode(lm, prompt, new).answer_ids[0]
    delta = -weight[old_id] + 8.0 * weight[new_id]
    with torch.no_grad():
        for key in keys:
            twin.value_slot(*key).add_(delta * (signs or {}).get(key, 1.0))
    return twin


def top1_is(lm, prompt, answer) -> bool:
    query = encode(lm, prompt, answer)
    with torch.no_grad():
        logits = lm.model(input_ids=query.input_ids[None]).logits[0, query.position]
    return int(logits.argmax()) == query.answer_ids[0]


def first_probability(lm, prompt, answer) -> float:
    query = encode(lm, prompt, answer)
    with torch.no_grad():
        logits = lm.model(input_ids=query.input_ids[None]).logits[0, query.position].double()
    return float(torch.softmax(logits, -1)[query.answer_ids[0]])


def mean_logprob(lm, prompt, answer) -> float:
    query = encode(lm, prompt, answer)
    with torch.no_grad():
        logits = lm.model(input_ids=query.input_ids[None]).logits[0].double()
    return float(np.mean([float(torch.log_softmax(logits[p], -1)[t])
                          for p, t in zip(query.target_positions, query.answer_ids, strict=True)]))


def values_of(rows, fact_id, variant="kn"):
    return {r["metric"]: r["value"] for r in rows if r["fact_id"] == fact_id and r["variant"] == variant}


def pair_reference(lm, twin, prompts, old, new) -> dict[str, float]:
    def probs(model, answer):
        return np.array([probability_by_hand(model, q, answer) for q in prompts])

    old_before, new_before, old_after, new_after = probs(lm, old), probs(lm, new), probs(twin, old), probs(twin, new)
    hit_before = np.array([top1_is(lm, q, new) for q in prompts])
    hit_after = np.array([top1_is(twin, q, new) for q in prompts])
    first_before = np.array([first_probability(lm, q, new) for q in prompts])
    first_after = np.array([first_probability(twin, q, new) for q in prompts])
    return {"new_beats_old": np.mean(new_after > old_after), "new_beats_old_before": np.mean(new_before > old_before),
            "top1_new": np.mean(hit_after), "top1_became": np.mean(hit_after & ~hit_before),
            "p_rose": np.mean(first_after > first_before), "p_joint_rose": np.mean(new_after > new_before),
            "p_first_new_after": first_after.mean(), "p_new_after": new_after.mean(),
            "p_new_before": new_before.mean(), "p_old_after": old_after.mean()}


def check(values, prefix, reference):
    for metric, expected in reference.items():
        assert values[f"{prefix}_{metric}"] == pytest.approx(expected, rel=1e-7, abs=1e-12), f"{prefix}_{metric}"


def test_every_prompt_set_matches_a_hand_edited_copy(tiny, facts, neurons):
    before = state(tiny)
    rows = edit_robustness_study(tiny, facts, neurons, data=DATA, settings=[("absolute", "none")], n_neighbours=2)
    assert same_state(tiny, before)
    assert {r["study"] for r in rows} == {STUDY}
    france = facts[0]
    new = choose_new_answer(tiny, france, [f for f in facts if f.relation == "capital"], 0)
    keys = [n.key for n in neurons[france.id] if n.key not in EXCLUDED]
    twin = edited_copy(tiny, keys, "Paris", new, france.prompts()[0])
    values = values_of(rows, france.id)
    assert values["edited"] == 1.0 and values["neurons"] == len(keys) and values["aliases"] == 1.0
    check(values, "own", pair_reference(tiny, twin, france.prompts(), "Paris", new))
    alias_prompts = Fact("the French country", "capital", "Paris", france.templates).prompts()
    check(values, "alias", pair_reference(tiny, twin, alias_prompts, "Paris", new))
    # symmetry: "<new> is the capital of" -> France, against the new answer's own country; "Paris is ..." -> France
    owner = next(f.subject for f in facts if f.object == new)
    reverse_new = Fact(new, "r", "France", DATA.one_to_one["capital"].reverse_templates).prompts()
    reverse_old = Fact("Paris", "r", "France", DATA.one_to_one["capital"].reverse_templates).prompts()
    p_subject = {name: np.array([probability_by_hand(m, q, "France") for q in reverse_new])
                 for name, m in (("tiny", tiny), ("twin", twin))}
    p_owner = np.array([probability_by_hand(twin, q, owner) for q in reverse_new])
    assert values["reverse_new_p_before"] == pytest.approx(p_subject["tiny"].mean(), rel=1e-7)
    assert values["reverse_new_p_after"] == pytest.approx(p_subject["twin"].mean(), rel=1e-7)
    assert values["reverse_new_p_joint_rose"] == pytest.approx(np.mean(p_subject["twin"] > p_subject["tiny"]))
    assert values["reverse_new_p_rose"] == pytest.approx(np.mean([first_probability(twin, q, "France") >
                                                                  first_probability(tiny, q, "France")
                                                                  for q in reverse_new]))
    assert values["reverse_new_beats_owner"] == pytest.approx(np.mean(p_subject["twin"] > p_owner))
    assert values["reverse_new_top1_after"] == pytest.approx(np.mean([top1_is(twin, q, "France")
                                                                      for q in reverse_new]))
    assert values["reverse_old_p_after"] == pytest.approx(
        np.mean([probability_by_hand(twin, q, "France") for q in reverse_old]), rel=1e-7)
    assert values["reverse_old_top1_after"] == pytest.approx(np.mean([top1_is(twin, q, "France")
                                                                      for q in reverse_old]))
    # neighbourhood: the two sampled neighbours are the other capital facts not answered `new`
    neighbours = [f for f in facts if f.relation == "capital" and f.id != france.id and f.object != new]
    assert values["neighbours"] == len(neighbours) == 1 and values["neighborhood_prompts"] == 1
    other = neighbours[0]
    margins = [mean_logprob(twin, q, other.object) - mean_logprob(twin, q, new) for q in other.prompts()]
    drawn = [m for m in margins if m == pytest.approx(values["neighborhood_diff"], rel=1e-7)]
    assert len(drawn) >= 1 and values["neighborhood"] == float(drawn[0] > 0)  # one prompt per neighbour
    # no coarse sets given: no held-out rows; a fact of a relation that is not one-to-one: no reverse rows
    assert not any(k.startswith(("heldout", "kept", "refined")) for k in values)
    spain = values_of(rows, "language:Spain")
    assert spain["edited"] == 1.0 and not any(k.startswith("reverse") for k in spain) and "alias_prompts" not in spain


def test_score_equals_the_editing_study_one_by_one_batches(tiny, facts):
    queries = [encode(tiny, p, answer) for f in facts for p in f.prompts() for answer in (f.object, "Copenhagen")]
    fast, slow = er.score(tiny, queries, batch_size=5), editing_score(tiny, queries, batch_size=1)
    assert np.allclose(fast.probability, slow.probability, rtol=1e-9, atol=0)
    assert np.allclose(fast.mean_logprob, slow.mean_logprob, rtol=1e-9, atol=0)
    assert (fast.top1 == slow.top1).all() and (fast.first == slow.first).all()
    by_hand = [first_probability(tiny, p, answer) for f in facts for p in f.prompts() for answer in (f.object,
                                                                                                    "Copenhagen")]
    assert np.allclose(fast.first_probability, by_hand, rtol=1e-9, atol=0)
    if tiny.kind == "causal":  # one-token answers after one prompt share an input
        assert len({er._read_input(tiny, q) for q in queries}) < len(queries)


def test_held_out_split_and_a_hand_computed_refinement(facts):
    fact = Fact("France", "capital", "Paris", tuple(f"T{i} [X] is [Y]." for i in range(6)))
    kept, held = held_out_split(fact, 2, seed=0)
    assert len(held) == 2 and sorted(kept + held) == list(range(6)) and held_out_split(fact, 2, 0) == (kept, held)
    assert held_out_split(fact, 2, seed=1) != (kept, held) or held_out_split(fact, 2, seed=2) != (kept, held)
    assert len(held_out_split(facts[0], 5, 0)[1]) == 1  # three templates: at least two are kept
    a, b, c, d = (Neuron(2, 1, 1.0), Neuron(2, 2, 1.0), Neuron(1, 3, 1.0), Neuron(0, 4, 1.0))
    coarse = [[a, b, c], [a, b], [a, c], [a, b, d]]
    # fixed share 0.5: all four prompts need > 2 votes (a 4, b 3); the first three need > 1.5 (a 3, b 2, c 2)
    assert held_out_neurons(coarse, range(4), 0.5) == sorted([a.key, b.key])
    assert held_out_neurons(coarse, [0, 1, 2], 0.5) == sorted([a.key, b.key, c.key])
    # adaptive: 0.7 keeps a and b of four prompts (2, in range); of three it keeps a only, so 0.65 gives a, b, c
    assert held_out_neurons(coarse, range(4)) == sorted([a.key, b.key])
    assert held_out_neurons(coarse, [0, 1, 2]) == sorted([a.key, b.key, c.key])


@pytest.mark.parametrize("share", ["adaptive", 0.3])
def test_recomputed_refined_sets_equal_the_atlas_and_the_held_out_edit_matches_by_hand(tmp_path, share):
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    path = tmp_path / "tiny.sqlite"
    run(lm, tiny_facts(), path, steps=3, known_only=False, progress=False, share=share)
    with Atlas.open(path, read_only=True) as atlas:
        inputs = er.atlas_inputs(atlas)
    assert inputs["share"] == share
    facts, refined, coarse = inputs["facts"], inputs["neurons_by_fact"], inputs["coarse_by_fact"]
    for fact in facts:  # nothing held out: exactly the atlas's refined set
        assert held_out_neurons(coarse[fact.id], range(len(fact.templates)), share) == \
            sorted(n.key for n in refined[fact.id])
    before = state(lm)
    rows = edit_robustness_study(lm, facts, refined, coarse_by_fact=coarse, share=share, data=DATA, held_out=1,
                                 settings=[("absolute", "none")])
    assert same_state(lm, before)
    checked = 0
    for fact in facts:
        values = values_of(rows, fact.id)
        if values.get("heldout_edited") != 1.0:
            continue
        assert values["refined_equal"] == 1.0
        kept, held = held_out_split(fact, 1, 0)
        held_keys = held_out_neurons(coarse[fact.id], kept, share)
        counts = er.relation_counts(facts, refined)[fact.relation]
        shared = {k for k, n in counts[0].items() if n >= 2 and n > 0.1 * counts[1]}
        new = choose_new_answer(lm, fact, facts, 0)
        twin = edited_copy(lm, [k for k in held_keys if k not in shared], fact.object, new, fact.prompts()[0])
        prompts = fact.prompts()
        check(values, "heldout", pair_reference(lm, twin, [prompts[i] for i in held], fact.object, new))
        check(values, "kept", pair_reference(lm, twin, [prompts[i] for i in kept], fact.object, new))
        full = edited_copy(lm, [n.key for n in refined[fact.id] if n.key not in shared], fact.object, new, prompts[0])
        check(values, "heldout_full", pair_reference(lm, full, [prompts[i] for i in held], fact.object, new))
        checked += 1
    assert checked >= 3


def test_signed_updates_read_their_signs_on_the_kept_prompts_only(facts, neurons, monkeypatch):
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    coarse = {f.id: [neurons[f.id][:1], neurons[f.id], neurons[f.id]] for f in facts}
    seen = []
    real = er.update_fact

    def spy(*args, **kwargs):
        seen.append([p.template for p in kwargs["prompts"]] if kwargs.get("prompts") else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(er, "update_fact", spy)
    rows = edit_robustness_study(lm, facts[:1], neurons, pool=facts, coarse_by_fact=coarse, data=DATA, held_out=1,
                                 settings=[("absolute", "activation")])
    kept, _ = held_out_split(facts[0], 1, 0)
    assert seen == [None, [facts[0].templates[i] for i in kept]]  # the full edit: the fact's prompts (default)
    assert robustness_summary(rows, "kn_signed")["edited"] == 1.0


def test_the_model_is_restored_after_an_exception_inside_an_edit(facts, neurons, monkeypatch):
    lm = tiny_lm("gpt2", dtype=torch.float64, layers=3)
    before = state(lm)
    real, calls = er.score, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first scoring under the edit
            assert not same_state(lm, before)
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(er, "score", failing)
    with pytest.raises(RuntimeError, match="boom"):
        edit_robustness_study(lm, facts, neurons, data=DATA)
    assert same_state(lm, before)


def test_without_one_to_one_facts_it_says_so_and_runs_the_rest(facts, neurons):
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    others = [f for f in facts if f.relation != "capital"]
    notes = coverage_notes(others, DATA, None)
    assert notes == ["no fact of a one-to-one relation (capital): the symmetry test is skipped.",
                     "no prompts' coarse neurons given: the held-out paraphrase test is skipped."]
    assert "no fact whose subject has aliases: the synonym test is skipped." in coverage_notes(others[2:], DATA)
    assert coverage_notes(facts, DATA, {f.id: [[]] for f in facts}) == []
    rows = edit_robustness_study(lm, others, neurons, data=DATA)
    assert rows and not any(r["metric"].startswith("reverse") for r in rows)
    summary = robustness_summary(rows, "kn")
    assert summary["facts"] == len(others) and summary["own_p_rose_facts"] == summary["edited"]
    assert "reverse" not in format_summary(rows) and "own prompts" in format_summary(rows)


def test_deterministic_and_the_summary_averages_over_facts(facts, neurons):
    lm = tiny_lm("bert", dtype=torch.float64, layers=3)
    first = edit_robustness_study(lm, facts, neurons, data=DATA, seed=3)
    assert first == edit_robustness_study(lm, facts, neurons, data=DATA, seed=3)
    for variant in ("kn", "kn_signed"):
        s = robustness_summary(first, variant)
        own = [r["value"] for r in first if r["variant"] == variant and r["metric"] == "own_p_rose"]
        assert s["own_p_rose"] == pytest.approx(np.mean(own)) and s["own_p_rose_facts"] == len(own)
        assert math.isnan(s.get("alias_new_beats_old", math.nan)) or s["alias_new_beats_old_facts"] <= 2


def test_bad_settings_are_refused_in_one_line(facts, neurons):
    lm = tiny_lm("llama", layers=3)
    with pytest.raises(er.KneuronError, match="Unknown update setting absolute:up"):
        edit_robustness_study(lm, facts, neurons, data=DATA, settings=[("absolute", "up")])


def test_a_one_to_one_fact_without_a_one_to_one_answer_is_edited_without_the_symmetry_test(facts, neurons):
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    only_france = RobustnessData({"capital": OneToOne("capital", ("[X] is the capital of [Y].",), ("France",))})
    rows = edit_robustness_study(lm, facts[:1], neurons, pool=facts, data=only_france, settings=[("absolute", "none")])
    values = values_of(rows, "capital:France")
    assert values["edited"] == 1.0 and not any(k.startswith("reverse") for k in values)
    assert values["own_prompts"] == 3


def test_the_pool_skips_the_facts_a_masked_model_cannot_encode(facts, neurons):
    """tiny-bert cannot spell 'Athens' or 'Vienna': the pool of built-in facts leaves those facts out (before, their
    neighbour prompts raised FactError), keeps every fact it can encode, and the study runs on shipped data."""
    from kneuron.facts import builtin_facts
    from kneuron.facts.known import encodable_facts
    from kneuron.facts.robustness import robustness_data

    lm = tiny_lm("bert", dtype=torch.float64, layers=3)
    pool, owners = er.study_pool(lm, facts)
    candidates = [f for f in builtin_facts() if f.relation in {f.relation for f in facts}]
    usable, skipped = encodable_facts(lm, candidates)
    assert {"capital:Greece", "capital:Austria"} <= set(skipped)
    assert [f.id for f in pool] == list(dict.fromkeys([f.id for f in usable] + [f.id for f in facts]))
    assert encodable_facts(lm, pool)[1] == {}
    rows = edit_robustness_study(lm, facts, neurons, pool=pool, owners_from=owners, data=robustness_data(),
                                 settings=[("absolute", "none")])
    assert {r["fact_id"] for r in rows} == {f.id for f in facts}
