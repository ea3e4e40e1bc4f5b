"""Every mean over facts on the overview and relation pages of ``kneuron serve`` carries its n and 95% interval:
the headline and suppress/amplify figures show the stored aggregate's mean (moved here in the atlas, so that a
mean recomputed from the rows would differ), and the refined neurons per done fact, per relation and overall,
show the seeded bootstrap over facts with n."""

from __future__ import annotations

import html
import re
import sqlite3

import pytest

from kneuron.store import Atlas
from kneuron.studies.intervals import count_interval, find, format_interval, mean_interval


@pytest.fixture
def doctored(atlas_copy):
    """The atlas with every stored suppress/amplify mean moved by +0.25 (its rows unchanged)."""
    with sqlite3.connect(atlas_copy) as db:
        db.execute("UPDATE aggregates SET mean = mean + 0.25 WHERE study = 'suppress_amplify'")
    return atlas_copy


def _page(path, url):
    from fastapi.testclient import TestClient

    from kneuron.serve.app import create_app

    with TestClient(create_app(path), base_url="http://localhost") as client:
        response = client.get(url)
    assert response.status_code == 200
    return response.text


def _value(page, element_id):
    found = re.search(rf'id="{re.escape(element_id)}" data-value="([^"]*)"', page)
    assert found, element_id
    return float(found.group(1))


def test_the_overview_shows_the_stored_means_and_neurons_per_fact_with_intervals(doctored):
    page = _page(doctored, "/")
    with Atlas.open(doctored, read_only=True) as atlas:
        stored = atlas.aggregates("suppress_amplify")
        refined = atlas.all_refined()
        counts = {r: [len(refined[f.id]) for f in atlas.facts(relation=r)] for r in atlas.relations()}
    suppress = find(stored, "kn", "suppress")
    assert _value(page, "headline-suppress") == pytest.approx(suppress.mean)
    assert html.escape(format_interval(suppress, percent=True)) in page
    for relation, values in [*counts.items(), ("all", [c for v in counts.values() for c in v])]:
        expected = count_interval(values)
        assert expected.n == len(values) and f"n = {len(values)}" in format_interval(expected)
        assert _value(page, f"per-fact-{relation}") == pytest.approx(expected.mean)
        cell = re.search(rf'id="per-fact-{relation}" data-value="[^"]*">([^<]*)<', page).group(1)
        assert html.unescape(cell) == format_interval(expected)


def test_the_relation_page_shows_the_stored_means_and_neurons_per_fact_with_intervals(doctored):
    page = _page(doctored, "/relation/capital")
    with Atlas.open(doctored, read_only=True) as atlas:
        stored = atlas.aggregates("suppress_amplify")
        counts = [len(atlas.knowledge_neurons(f.id).neurons) for f in atlas.facts(relation="capital")]
    for variant in ("kn", "random"):
        for metric in ("suppress", "amplify"):
            interval = find(stored, variant, metric, "capital")
            assert _value(page, f"figure-{variant}_{metric}") == pytest.approx(interval.mean)
            assert html.escape(format_interval(interval, percent=True)) in page
    assert _value(page, "per-fact") == pytest.approx(sum(counts) / len(counts))
    assert html.escape(format_interval(count_interval(counts))) in page


def _reference_scores(atlas, relation=None):
    """Each refined neuron's score per done fact (of ``relation``), from the facts' knowledge neurons one by one:
    the slow, obvious reading of what top_neuron_intervals aggregates."""
    scores: dict[tuple[int, int], list[float]] = {}
    for fact in atlas.facts(relation=relation):
        for neuron in atlas.knowledge_neurons(fact.id).neurons:
            scores.setdefault((neuron.layer, neuron.index), []).append(neuron.score)
    return scores


@pytest.mark.parametrize("relation", [None, "capital"])
def test_top_neuron_intervals_match_a_fact_by_fact_reference(serve_atlas, relation):
    with Atlas.open(serve_atlas, read_only=True) as atlas:
        top = atlas.top_neuron_intervals(8, relation=relation)
        reference = _reference_scores(atlas, relation)
        plain = atlas.top_neurons(8, relation=relation)
    assert [(n.key, facts) for n, facts, _ in top] == [(n.key, facts) for n, facts in plain]
    assert any(facts > 1 for _, facts, _ in top)  # else the interval of a one-fact neuron is all the test saw
    for neuron, facts, interval in top:
        values = reference[neuron.key]
        assert interval.n == facts == len(values)
        assert interval.mean == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert interval.mean == pytest.approx(neuron.score, rel=1e-12)
        expected = mean_interval(values)
        assert (interval.lo, interval.hi) == pytest.approx((expected.lo, expected.hi), rel=1e-12)
        assert interval.lo <= interval.mean <= interval.hi


@pytest.mark.parametrize(("url", "relation"), [("/", None), ("/relation/capital", "capital")])
def test_the_shared_neurons_mean_scores_show_their_interval_and_n(serve_atlas, url, relation):
    page = _page(serve_atlas, url)
    with Atlas.open(serve_atlas, read_only=True) as atlas:
        top = atlas.top_neuron_intervals(15 if relation is None else 20, relation=relation)
    assert top
    for neuron, facts, interval in top:
        cell = re.search(rf'id="score-{re.escape(str(neuron))}" data-value="([^"]*)">([^<]*)<', page)
        assert cell, neuron
        assert float(cell.group(1)) == pytest.approx(interval.mean)
        assert html.unescape(cell.group(2)) == format_interval(interval, significant=4)
        assert cell.group(2).endswith(f"n = {facts}")
