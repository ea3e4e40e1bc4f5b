"""The cross-lingual study: overlap sets, layer counts, the s × t suppression and the cross-lingual edit, each checked
against a slow by-hand recomputation on tiny models (a hand-written hook and softmax, a hand-written weight edit)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kneuron.errors import KneuronError
from kneuron.facts import Fact
from kneuron.facts.languages import language_of, with_language
from kneuron.studies.cross_lingual_edit import choose_target, cross_lingual_edit, edit_summary
from kneuron.studies.languages import (
    jaccard_summary,
    language_study,
    language_versions,
    layer_summary,
    multilingual_keys,
    multilingual_refusal,
    neurons_per_language,
    overlap_summary,
    own_and_cross,
    suppression_matrix,
)
from studies.conftest import (
    CAPITAL,
    LANGUAGE_TEMPLATES,
    multilingual_done_facts,
    multilingual_fact,
    multilingual_neurons,
    multilingual_pool,
    probability_by_hand,
)
from tiny_models import tiny_lm


@pytest.fixture(params=["llama", "bert"])
def tiny(request):
    return tiny_lm(request.param, layers=3, neurons=16, dtype=torch.float64)


def values(rows, variant, metric=None, fact_id=None):
    return {(r["fact_id"], r["metric"]): r["value"] for r in rows if r["variant"] == variant
            and (metric is None or r["metric"] == metric) and (fact_id is None or r["fact_id"] == fact_id)}


def test_grouping_by_key_and_the_refusals():
    keys = multilingual_keys(multilingual_done_facts())
    assert list(keys) == ["capital:France", "capital:Germany", "capital:Italy"]  # not China (en only), not Japan
    assert list(keys["capital:Italy"]) == ["en", "fr"]
    assert language_versions(multilingual_done_facts())["capital:China"]["en"].object == "Beijing"
    assert multilingual_refusal(multilingual_done_facts()) is None
    plain = [Fact("Japan", "capital", "Tokyo", CAPITAL)]
    assert "none of its done facts has a language" in multilingual_refusal(plain)
    one = [multilingual_fact("France", "en"), multilingual_fact("Germany", "fr")]
    assert "2 or more languages" in multilingual_refusal(one)
    with pytest.raises(KneuronError, match="No cross-lingual study"):
        language_study(tiny_lm("llama"), one, multilingual_neurons())


def by_hand_overlap(found: dict[str, set]) -> dict[str, object]:
    """Shared / specific sets by brute force: every neuron of the union against every language's set."""
    union = set().union(*found.values())
    in_how_many = {n: sum(n in s for s in found.values()) for n in union}
    return {"union": union, "shared_all": {n for n in union if in_how_many[n] == len(found)},
            "shared": {n for n in union if in_how_many[n] > 1}, "specific": {n for n in union if in_how_many[n] == 1}}


def test_overlap_counts_and_jaccard_match_hand_computation():
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    rows = language_study(lm, multilingual_done_facts(), multilingual_neurons(), seed=1)
    found = multilingual_neurons()
    for key, versions in multilingual_keys(multilingual_done_facts()).items():
        sets = {code: {n.key for n in found[f.id]} for code, f in versions.items()}
        expected = by_hand_overlap(sets)
        got = values(rows, "overlap", fact_id=key)
        for name in ("union", "shared_all", "shared", "specific"):
            assert got[key, name] == len(expected[name])
        for name in ("shared_all", "shared", "specific"):
            share = len(expected[name]) / len(expected["union"])
            assert got[key, f"share_{name}"] == pytest.approx(share)
        for code in sets:
            others = set().union(*(s for c, s in sets.items() if c != code))
            assert got[key, f"specific@{code}"] == len(sets[code] - others)
        jac = values(rows, "jaccard", fact_id=key)
        assert len(jac) == math.comb(len(sets), 2)
        for a, b in itertools.combinations(sets, 2):
            union = sets[a] | sets[b]
            expect = len(sets[a] & sets[b]) / len(union) if union else math.nan
            assert jac[key, f"{a}|{b}"] == pytest.approx(expect, nan_ok=True)
    # France by its design: (2, 1) in all three, (2, 5) in en and fr, three specific ones
    france = values(rows, "overlap", fact_id="capital:France")
    assert (france["capital:France", "shared_all"], france["capital:France", "shared"],
            france["capital:France", "specific"]) == (1, 2, 3)
    # summaries: means over the keys that have the pair (Italy has no de)
    summary = overlap_summary(rows)
    assert summary["union"] == (pytest.approx(np.mean([5, 2, 2])), 3)
    pairs = jaccard_summary(rows)
    assert pairs["en", "fr"] == (pytest.approx(np.mean([2 / 4, 1 / 2, 0.0])), 3)
    assert pairs["fr", "de"] == (pytest.approx(np.mean([1 / 4, 0.0])), 2)
    assert neurons_per_language(rows)["de"] == (pytest.approx(np.mean([2, 0])), 2)
    # layers: each key's neurons by category, counted by hand
    layers = layer_summary(rows)
    for name in ("shared_all", "shared", "specific"):
        want = [0, 0, 0]
        for versions in multilingual_keys(multilingual_done_facts()).values():
            for layer, _ in by_hand_overlap({c: {n.key for n in found[f.id]} for c, f in versions.items()})[name]:
                want[layer] += 1
        assert [layers[name][layer] for layer in range(3)] == want
    assert layers["specific"] == {0: 2, 1: 3, 2: 1}  # France L1, L0, L1; Germany L0; Italy L2, L1


def test_suppression_matrix_matches_explicit_patches(tiny):
    rows = language_study(tiny, multilingual_done_facts(), multilingual_neurons(), seed=3)
    found = multilingual_neurons()
    keys = multilingual_keys(multilingual_done_facts())
    for key, versions in keys.items():
        for source, target in itertools.product(versions, versions):
            kn = [n.key for n in found[versions[source].id]]
            got = values(rows, "kn", f"suppress@{target}", with_language(key, source))
            if not kn:  # Germany@de has no neurons: it is a target only
                assert got == {}
                continue
            changes = []
            for prompt in versions[target].prompts():
                before = probability_by_hand(tiny, prompt, versions[target].object)
                after = probability_by_hand(tiny, prompt, versions[target].object, kn)
                changes.append((after - before) / before)
            assert got[with_language(key, source), f"suppress@{target}"] == pytest.approx(np.mean(changes),
                                                                                          rel=1e-7, abs=1e-12)
    # the shared / specific parts of France@en: (2, 1), (2, 5) are shared, (1, 3) is English only
    target = keys["capital:France"]["de"]
    changes = [(probability_by_hand(tiny, p, target.object, [(1, 3)]) - probability_by_hand(tiny, p, target.object))
               / probability_by_hand(tiny, p, target.object) for p in target.prompts()]
    assert values(rows, "kn_specific", "suppress@de", "capital:France@en")["capital:France@en", "suppress@de"] == \
        pytest.approx(np.mean(changes), rel=1e-7, abs=1e-12)
    assert values(rows, "kn_shared", "neurons", "capital:France@en")["capital:France@en", "neurons"] == 2
    # the matrix: per (s, t), the mean over the keys where s has neurons
    matrix = suppression_matrix(rows, "kn")
    cells = [v for (fid, metric), v in values(rows, "kn").items()
             if metric == "suppress@fr" and language_of(fid) == "de"]
    assert matrix["de", "fr"] == (pytest.approx(np.mean(cells)), 1)  # Germany@de has none: France only
    assert matrix["en", "en"][1] == 3 and ("de", "de") in matrix
    (own_mean, own_n), (cross_mean, cross_n) = own_and_cross(matrix)
    own_cells = [v for (fid, metric), v in values(rows, "kn").items()
                 if metric.startswith("suppress@") and metric.split("@")[1] == language_of(fid)]
    assert (own_mean, own_n) == (pytest.approx(np.mean(own_cells)), len(own_cells))
    assert cross_n == sum(n for (s, t), (_, n) in matrix.items() if s != t)


def test_random_control_is_same_layers_disjoint_and_seeded(tiny):
    rows = language_study(tiny, multilingual_done_facts(), multilingual_neurons(), seed=5)
    again = language_study(tiny, list(reversed(multilingual_done_facts())), multilingual_neurons(), seed=5)
    first, second = values(rows, "random"), values(again, "random")
    assert first.keys() == second.keys() and [first[k] for k in first] == pytest.approx([second[k] for k in first])
    other = language_study(tiny, multilingual_done_facts(), multilingual_neurons(), seed=6)
    assert values(other, "random") != values(rows, "random")
    from kneuron.studies.languages import overlap_of, suppression_sets

    for key, versions in multilingual_keys(multilingual_done_facts()).items():
        overlap = overlap_of(key, versions, multilingual_neurons())
        for source in versions:
            sets = suppression_sets(overlap, source, tiny.n_neurons, 5)
            assert sorted(layer for layer, _ in sets["random"]) == sorted(layer for layer, _ in sets["kn"])
            assert not set(sets["random"]) & overlap.union and len(set(sets["random"])) == len(sets["kn"])


def hand_edit_probabilities(lm, neurons_kept, old_en, new_en, facts_by_language, targets):
    """P(old) and P(new) on every language's prompts after adding −e(old) + 8 e(new) to each kept neuron's value
    slot by hand (the column of the FFN output weight for these layouts), then the weights put back."""
    head = lm.model.get_output_embeddings().weight.detach()
    first = {answer: lm.tokenizer(answer, add_special_tokens=False)["input_ids"][0] for answer in (old_en, new_en)}
    delta = -1.0 * head[first[old_en]] + 8.0 * head[first[new_en]]
    saved = {layer: lm.ffn_out(layer).weight.detach().clone() for layer, _ in neurons_kept}
    out = {}
    try:
        with torch.no_grad():
            for layer, index in neurons_kept:
                weight = lm.ffn_out(layer).weight
                if lm.spec.layout == "linear":
                    weight[:, index] += delta
                else:
                    weight[index, :] += delta
        for code, f in facts_by_language.items():
            out[code] = (np.array([probability_by_hand(lm, p, f.object) for p in f.prompts()]),
                         np.array([probability_by_hand(lm, p, targets[code]) for p in f.prompts()]))
    finally:
        with torch.no_grad():
            for layer, weight in saved.items():
                lm.ffn_out(layer).weight.copy_(weight)
    return out


def test_cross_lingual_edit_matches_a_hand_made_edit_and_restores_the_model(tiny):
    keys = multilingual_keys(multilingual_done_facts())
    before = {name: p.detach().clone() for name, p in tiny.model.state_dict().items()}
    rows = cross_lingual_edit(tiny, keys, multilingual_neurons(), pool=multilingual_pool(),
                              counted=multilingual_done_facts(), signs=("none",), seed=2)
    after = tiny.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # every edit undone bit-exactly
    france = keys["capital:France"]
    versions = language_versions(multilingual_pool())
    target = choose_target(tiny, "capital:France", france["en"], versions, "en", seed=2, languages=list(france))
    # a target with a version in each of France's languages (Germany, Italy), never China (English only)
    assert {choose_target(tiny, "capital:France", france["en"], versions, "en", seed=s, languages=list(france))
            for s in range(40)} == {"capital:Germany", "capital:Italy"}
    assert "capital:China" in {choose_target(tiny, "capital:France", france["en"], versions, "en", seed=s)
                               for s in range(40)}
    forms = {code: language_versions(multilingual_pool())[target][code].object for code in france
             if code in language_versions(multilingual_pool())[target]}
    # (2, 1) is in all three of France's languages, but one key: it is not left out as shared by many facts
    kept = [(2, 1), (2, 5), (1, 3)]
    hand = hand_edit_probabilities(tiny, kept, "Paris", forms["en"], france, forms)
    got = {code: values(rows, "edit_kn", fact_id=with_language("capital:France", code)) for code in france}
    for code, (p_old, p_new) in hand.items():
        fid = with_language("capital:France", code)
        assert got[code][fid, "neurons"] == 3 and got[code][fid, "measured"] == 1
        assert got[code][fid, "p_old_after"] == pytest.approx(p_old.mean(), rel=1e-7, abs=1e-12)
        assert got[code][fid, "p_new_after"] == pytest.approx(p_new.mean(), rel=1e-7, abs=1e-12)
        assert got[code][fid, "new_beats_old"] == np.mean(p_new > p_old)
        assert got[code][fid, "success"] == float(np.mean(p_new > p_old) > 0.5)
        clean = np.mean([probability_by_hand(tiny, p, forms[code]) for p in france[code].prompts()])
        assert got[code][fid, "p_new_before"] == pytest.approx(clean, rel=1e-7, abs=1e-12)
    # the random control: as many neurons, same layers, same delta; its own rows
    assert values(rows, "edit_random", "neurons", "capital:France@de")["capital:France@de", "neurons"] == 3
    summary = edit_summary(rows, "edit_kn")
    assert list(summary) == ["en", "fr", "de"]
    measured_de = [fid for (fid, metric), v in values(rows, "edit_kn", "measured").items()
                   if language_of(fid) == "de" and v == 1]
    assert summary["de"]["keys"] == len(measured_de)
    assert summary["en"]["p_new_after"] == pytest.approx(np.mean(
        [v for (fid, _), v in values(rows, "edit_kn", "p_new_after").items() if language_of(fid) == "en"]))


def test_edit_measures_the_target_form_of_each_language():
    """With Italy the only other capital, the edit goes to capital:Italy and is measured with Italy's form in each
    language ("Tiber" on the German prompts); without Italy@de in the pool, German is recorded as not measured."""
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    keys = multilingual_keys(multilingual_done_facts())
    france = keys["capital:France"]
    italy = [multilingual_fact("Italy", code) for code in ("en", "fr", "de")]
    assert choose_target(lm, "capital:France", france["en"], language_versions([*france.values(), *italy]), "en") \
        == "capital:Italy"
    rows = cross_lingual_edit(lm, {"capital:France": france}, multilingual_neurons(), pool=italy, signs=("none",),
                              random=False)
    for code, f in france.items():
        got = values(rows, "edit_kn", fact_id=f.id)
        assert got[f.id, "measured"] == 1
        new = {"en": "Rome", "fr": "Rome", "de": "Tiber"}[code]
        clean = np.mean([probability_by_hand(lm, p, new) for p in f.prompts()])
        assert got[f.id, "p_new_before"] == pytest.approx(clean, rel=1e-7, abs=1e-12)
    rows = cross_lingual_edit(lm, {"capital:France": france}, multilingual_neurons(), pool=italy[:2], signs=("none",),
                              random=False)
    measured = {fid: v for (fid, _), v in values(rows, "edit_kn", "measured").items()}
    assert measured == {"capital:France@en": 1, "capital:France@fr": 1, "capital:France@de": 0}
    assert values(rows, "edit_kn", fact_id="capital:France@de").keys() == {
        ("capital:France@de", m) for m in ("edited", "neurons", "measured")}
    # a German form the tiny vocabulary cannot spell ("Xylophone" is its unknown token) is not measured either
    unspellable = Fact("Italy", "capital", "Xylophone", LANGUAGE_TEMPLATES["de"], id="capital:Italy@de")
    rows = cross_lingual_edit(lm, {"capital:France": france}, multilingual_neurons(), pool=[*italy[:2], unspellable],
                              signs=("none",), random=False)
    assert values(rows, "edit_kn", "measured", "capital:France@de") == {("capital:France@de", "measured"): 0.0}


def test_edit_without_english_neurons_is_recorded_as_not_edited():
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    keys = multilingual_keys(multilingual_done_facts())
    found = multilingual_neurons() | {"capital:Italy@en": []}
    rows = cross_lingual_edit(lm, {"capital:Italy": keys["capital:Italy"]}, found, pool=multilingual_pool(), seed=0)
    assert {(r["variant"], r["fact_id"], r["metric"], r["value"]) for r in rows} == {
        (variant, "capital:Italy@en", "edited", 0.0)
        for variant in ("edit_kn", "edit_random", "edit_kn_signed", "edit_random_signed")}
    assert edit_summary(rows, "edit_kn")["en"]["edited"] == 0
