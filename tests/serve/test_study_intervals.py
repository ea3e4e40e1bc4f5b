"""The study pages of ``kneuron serve`` show the stored aggregates of every study, with no page of its own: the
editing, languages, vocabulary, interactions, consistency and edit-robustness studies' intervals, n and paired p
(the per-language ones of the languages study too), as the runner stored them."""

from __future__ import annotations

import html

import pytest

from kneuron.store import Atlas
from kneuron.studies.intervals import aggregate_rows, find, format_interval
from kneuron.studies.languages_summary import language_aggregates
from kneuron.studies.registry import study_named

#: per study, rows of a few facts: (variant, metric, value of fact i)
SHAPES = {
    "editing": [("kn", "new_beats_old", lambda i: 0.5 + 0.1 * i), ("random", "new_beats_old", lambda i: 0.1 * i),
                ("erase_zero", "own_p_change", lambda i: -0.3 - 0.05 * i),
                ("erase_random_zero", "own_p_change", lambda i: 0.01 * i)],
    "vocabulary": [("kn", "answer_top10", lambda i: float(i % 2)), ("random", "answer_top10", lambda i: 0.0)],
    "interactions": [("kn", "suppress_all", lambda i: -0.2 * i), ("kn", "reached_50", lambda i: float(i > 1)),
                     ("random", "reached_50", lambda i: 0.0)],
    "consistency": [("fact", "jaccard", lambda i: 0.2 + 0.1 * i)],
    "edit_robustness": [("kn", "alias_new_beats_old", lambda i: 0.25 * i)],
}


def rows_of(shape, facts):
    return [{"variant": variant, "relation": fact.relation, "fact_id": fact.id, "metric": metric, "value": value(i)}
            for variant, metric, value in shape for i, fact in enumerate(facts)]


def language_rows(facts):
    out = []
    for i, fact in enumerate(facts):
        for code in ("en", "fr"):
            for variant, value in (("kn", -0.5 - 0.1 * i), ("random", 0.02 * i)):
                out += [{"variant": variant, "relation": fact.relation, "fact_id": f"{fact.id}@{code}",
                         "metric": f"suppress@{target}", "value": value + (0.1 if target != code else 0.0)}
                        for target in ("en", "fr")]
    return out


@pytest.fixture(scope="module")
def studied(tmp_path_factory, serve_atlas):
    import shutil

    path = tmp_path_factory.mktemp("serve-intervals") / "studies.sqlite"
    shutil.copyfile(serve_atlas, path)
    stored = {}
    with Atlas.open(path) as atlas:
        facts = atlas.facts()[:5]
        for study, shape in [*SHAPES.items(), ("languages", None)]:
            rows = rows_of(shape, facts) if shape else language_rows(facts)
            controls = study_named(study).controls
            aggregates = aggregate_rows(rows, controls)
            if study == "languages":
                aggregates += language_aggregates(rows, controls)
            atlas.write_results(study, rows, facts=[f.id for f in facts], aggregates=aggregates)
            stored[study] = atlas.aggregates(study)
    return path, stored


@pytest.mark.parametrize("study", [*SHAPES, "languages"])
def test_a_study_page_shows_its_stored_intervals(studied, study):
    from fastapi.testclient import TestClient

    from kneuron.serve.app import create_app

    path, stored = studied
    with TestClient(create_app(path), base_url="http://localhost") as client:
        page = html.unescape(client.get(f"/study/{study}").text)
    assert stored[study]
    for aggregate in stored[study]:  # every one, overall and per relation, with its n and p where it has one
        interval = find([aggregate], aggregate["variant"], aggregate["metric"], aggregate["relation"])
        assert format_interval(interval) in page, (study, aggregate)
    controlled = [a for a in stored[study] if a["control"]]
    assert all(f"vs {a['control']}" in page for a in controlled)
    if study == "languages":  # the per-language cells and the own/other-language means, with their p
        cell = find(stored[study], "kn", "suppress@en>fr")
        assert cell.n == 5 and cell.control == "random" and format_interval(cell) in page
        assert find(stored[study], "kn", "suppress_own").n == 5
