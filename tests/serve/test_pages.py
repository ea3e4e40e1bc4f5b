"""The numbers of every page equal the atlas's own (read back by other means: the Atlas API, plain SQL, numpy on
the decoded BLOBs, the report's headline); lists are capped; errors are one line."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from kneuron.report import ReportData, headline
from kneuron.serve import pages
from kneuron.store import Atlas
from kneuron.studies.intervals import find, format_interval


@pytest.fixture
def atlas(serve_atlas):
    with Atlas.open(serve_atlas, read_only=True) as opened:
        yield opened


def test_neuron_names_round_trip():
    assert pages.neuron_name(29, 1066) == "L29.N1066"
    for text in ("L29.N1066", "l29.n1066", "29.1066", "L29:N1066", " L29 . N1066 "):
        assert pages.parse_neuron_name(text) == (29, 1066)
    for text in ("", "L29", "N1066", "L-1.N2", "France", "L29.N1066.3"):
        assert pages.parse_neuron_name(text) is None


def test_overview_headline_equals_the_reports(atlas, serve_atlas):
    data = pages.overview(atlas)
    report = headline(ReportData.from_atlas(serve_atlas))
    figures = {h["key"]: h["value"] for h in data["headline"]}
    assert figures["suppress"] * 100 == pytest.approx(report.suppress)
    assert figures["amplify"] * 100 == pytest.approx(report.amplify)
    assert figures["auc_kn"] == pytest.approx(report.auc_kn_signed)  # the demo's headline is sign-aligned
    assert figures["auc_kn_raw"] == pytest.approx(report.auc_kn)
    assert figures["auc_activation"] == pytest.approx(report.auc_activation)
    assert figures["top_third"] * 100 == pytest.approx(report.top_third)
    assert data["done"] == report.facts == 10


def test_overview_counts_equal_plain_sql(atlas, serve_atlas):
    data = pages.overview(atlas)
    db = sqlite3.connect(serve_atlas)
    per_relation = dict(db.execute("SELECT f.relation, count(*) FROM neurons n JOIN facts f ON f.id = n.fact_id "
                                   "WHERE n.kind = 'refined' GROUP BY f.relation"))
    assert {r["relation"]: r["neurons"] for r in data["relations"]} == per_relation
    assert [r["relation"] for r in data["relations"]] == ["capital", "language", "continent"]
    assert {r["relation"]: r["done"] for r in data["relations"]} == {"capital": 5, "language": 3, "continent": 2}
    layers = dict(db.execute("SELECT layer, count(*) FROM neurons WHERE kind = 'refined' GROUP BY layer"))
    assert {r["layer"]: r["neurons"] for r in data["layers"]} == layers
    top = data["top_neurons"][0]
    most = db.execute("SELECT count(DISTINCT fact_id) AS c FROM neurons WHERE kind = 'refined' GROUP BY layer, neuron "
                      "ORDER BY c DESC LIMIT 1").fetchone()[0]
    assert top["facts"] == most
    assert data["params"]["steps"] == 3 and data["model"] == atlas.meta["model"]


def test_relation_page(atlas, serve_atlas):
    data = pages.relation_page(atlas, "capital")
    db = sqlite3.connect(serve_atlas)
    assert [f["id"] for f in data["facts"]] == [r[0] for r in db.execute(
        "SELECT id FROM facts WHERE relation = 'capital' ORDER BY seq")]
    for fact in data["facts"]:
        probabilities = [r[0] for r in db.execute("SELECT probability FROM prompts WHERE fact_id = ?", (fact["id"],))]
        assert fact["probability"] == pytest.approx(float(np.mean(probabilities)))
        assert fact["neurons"] == len(atlas.knowledge_neurons(fact["id"]).neurons)
    shared = atlas.relation_neurons("capital")
    assert [(n["layer"], n["index"], n["facts"]) for n in data["shared"]][:3] == \
        [(n["layer"], n["index"], shared[n["layer"], n["index"]]) for n in data["shared"]][:3]
    assert data["shared"][0]["facts"] == max(shared.values())
    figures = {f["key"]: f for f in data["figures"]}
    rows = [r for r in atlas.results("suppress_amplify") if r["relation"] == "capital" and r["variant"] == "kn"
            and r["metric"] == "suppress" and r["fact_id"]]
    assert figures["kn_suppress"]["value"] == pytest.approx(np.mean([r["value"] for r in rows]))
    assert figures["kn_suppress"]["n"] == len(rows) == 5
    with pytest.raises(pages.NotFound, match="no relation 'nope'"):
        pages.relation_page(atlas, "nope")


def test_fact_page(atlas):
    data = pages.fact_page(atlas, "capital:France")
    kn = atlas.knowledge_neurons("capital:France")
    assert [(n["layer"], n["index"]) for n in data["refined"]] == [(n.layer, n.index) for n in kn.neurons]
    assert [n["score"] for n in data["refined"]] == pytest.approx([n.score for n in kn.neurons])
    assert [[(n["layer"], n["index"]) for n in c] for c in data["coarse"]] == \
        [[(n.layer, n.index) for n in c] for c in kn.coarse]
    rows = atlas.prompt_rows("capital:France")
    assert [(p["text"], p["probability"], p["rank"]) for p in data["prompts"]] == \
        [(r["text"], r["probability"], r["rank"]) for r in rows]
    all_refined = atlas.all_refined()
    for n in data["refined"]:
        assert n["facts"] == sum(any(m.key == (n["layer"], n["index"]) for m in v) for v in all_refined.values())
    studies = {s["study"]: s["rows"] for s in data["results"]}
    mine = [r for r in atlas.results("suppress_amplify") if r["fact_id"] == "capital:France"]
    assert [(r["variant"], r["metric"]) for r in studies["suppress_amplify"]] == [(r["variant"], r["metric"])
                                                                                  for r in mine]
    assert "layers" not in studies  # no per-fact rows
    with pytest.raises(pages.NotFound, match="no fact 'capital:Atlantis'"):
        pages.fact_page(atlas, "capital:Atlantis")


def test_prompt_cells_are_the_stored_scores(atlas):
    scores = atlas.prompt_scores("capital:Germany")[1].scores.double().numpy()
    data = pages.prompt_cells(atlas, "capital:Germany", 1)
    top = scores.max()
    expected = {(int(n), int(layer)): float(scores[layer, n]) for layer, n in zip(
        *np.nonzero(np.abs(scores) >= pages.CELL_SHARE * top), strict=True)}
    assert {(c[0], c[1]): c[2] for c in data["cells"]} == pytest.approx(expected)
    assert data["max"] == pytest.approx(top)
    for layer, best in enumerate(data["top"]):
        order = np.argsort(-scores[layer], kind="stable")[:pages.TOP_PER_LAYER]
        assert [b["index"] for b in best] == order.tolist()
    with pytest.raises(pages.NotFound):
        pages.prompt_cells(atlas, "capital:Germany", 99)


def test_prompt_cells_of_a_sparse_atlas_equal_the_dense_view(sparse_atlas):
    with Atlas.open(sparse_atlas, read_only=True) as atlas:
        dense = atlas.prompt_scores("capital:Italy")[0].scores.double().numpy()
        data = pages.prompt_cells(atlas, "capital:Italy", 0)
    top = dense.max()
    expected = {(int(n), int(layer)) for layer, n in zip(*np.nonzero(np.abs(dense) >= pages.CELL_SHARE * top),
                                                         strict=True)}
    assert {(c[0], c[1]) for c in data["cells"]} == expected


def test_neuron_page(atlas, sparse_atlas):
    layer, index = 0, 15  # a knowledge neuron of several capitals in this atlas
    data = pages.neuron_page(atlas, layer, index)
    refined = {fid for fid, ns in atlas.all_refined().items() if any(n.key == (layer, index) for n in ns)}
    assert {r["fact_id"] for r in data["refined"]} == refined and data["n_refined"] == len(refined) >= 2
    coarse = [(f.id, p) for f in atlas.facts() for p, c in enumerate(atlas.knowledge_neurons(f.id).coarse)
              if any(n.key == (layer, index) for n in c)]
    assert sorted((c["fact_id"], c["prompt"]) for c in data["coarse"]) == sorted(coarse)
    for entry in data["coarse"]:
        stored = atlas.prompt_scores(entry["fact_id"])[entry["prompt"]].activations[layer, index]
        assert entry["activation"] == pytest.approx(float(stored))
    with Atlas.open(sparse_atlas, read_only=True) as sparse:
        sparse_data = pages.neuron_page(sparse, layer, index)
        for entry in sparse_data["coarse"]:  # a coarse neuron's score is always kept, so its activation is too
            stored = sparse.prompt_scores(entry["fact_id"])[entry["prompt"]].activations[layer, index]
            assert entry["activation"] == pytest.approx(float(stored))
    with pytest.raises(pages.NotFound, match="outside the model"):
        pages.neuron_page(atlas, 99, 0)


def test_search(atlas):
    assert pages.search(atlas, "L1.N16") == {"query": "L1.N16", "redirect": "/neuron/L1.N16"}
    assert pages.search(atlas, "capital:France")["redirect"] == "/fact/capital%3AFrance"
    assert pages.search(atlas, "language")["redirect"] == "/relation/language"
    found = pages.search(atlas, "Italy")
    assert [m["id"] for m in found["matches"]] == ["capital:Italy", "language:Italy"] and "redirect" not in found
    assert pages.search(atlas, "Stockh")["redirect"] == "/fact/capital%3ASweden"  # one match: straight to it
    assert pages.search(atlas, "100%")["matches"] == []  # LIKE wildcards are literal
    assert pages.search(atlas, "_")["matches"] == []
    with pytest.raises(Exception, match="at most 200"):
        pages.search(atlas, "x" * 201)


def test_study_page_means_are_what_the_headline_shows(atlas):
    data = pages.study_page(atlas, "suppress_amplify", {"variant": "kn", "metric": "suppress"})
    overview = {h["key"]: h["value"] for h in pages.overview(atlas)["headline"]}
    stored = find(atlas.aggregates("suppress_amplify"), "kn", "suppress")
    assert data["means"] == [{"variant": "kn", "metric": "suppress", "mean": pytest.approx(overview["suppress"]),
                              "n": 10, "interval": format_interval(stored)}]
    assert stored.n == 10 and stored.control == "random"
    assert all(r["variant"] == "kn" and r["metric"] == "suppress" for r in data["rows"])
    with pytest.raises(pages.NotFound, match="no results of study 'nope'"):
        pages.study_page(atlas, "nope", {})


def test_long_lists_are_capped(atlas_copy, monkeypatch):
    monkeypatch.setattr(pages, "MAX_ROWS", 2)
    with Atlas.open(atlas_copy, read_only=True) as atlas:
        data = pages.relation_page(atlas, "capital")
        assert len(data["facts"]) == 2 and data["n_facts"] == 5
        neuron = pages.neuron_page(atlas, 0, 15)
        assert len(neuron["coarse"]) == 2 and neuron["n_coarse"] > 2
        assert len(pages.search(atlas, "a")["matches"]) == 2


def test_pages_read_one_snapshot_while_a_run_writes(atlas_copy):
    """A page read inside a snapshot is one moment: a write committed meanwhile is not half in it."""
    reader = Atlas.open(atlas_copy, read_only=True, check=False)
    with reader.snapshot():
        before = pages.overview(reader)["done"]
        db = sqlite3.connect(atlas_copy)
        db.execute("UPDATE facts SET status = 'pending' WHERE id = 'capital:France'")
        db.commit()
        assert pages.overview(reader)["done"] == before == 10
    assert pages.overview(reader)["done"] == 9
    reader.close()


def test_nothing_is_nan_in_the_json(atlas):
    import json

    for data in (pages.overview(atlas), pages.fact_page(atlas, "capital:Denmark"), pages.neuron_page(atlas, 0, 15),
                 pages.relation_page(atlas, "language")):
        json.dumps(data, allow_nan=False)  # raises on NaN or infinity
    assert not any(isinstance(v, float) and math.isnan(v) for v in pages.prompt_cells(atlas, "capital:France", 0))


def test_relation_figures_without_the_results_index_are_the_same(atlas_copy):
    """An atlas whose studies ran before the results-by-fact index existed reads the study's rows instead."""
    with Atlas.open(atlas_copy, read_only=True) as atlas:
        indexed = pages.relation_page(atlas, "capital")["figures"]
    db = sqlite3.connect(atlas_copy)
    db.execute("DROP INDEX results_by_fact")
    db.commit()
    db.close()
    with Atlas.open(atlas_copy, read_only=True) as atlas:
        assert pages.relation_page(atlas, "capital")["figures"] == indexed
    assert [f["n"] for f in indexed] == [5, 5, 5, 5]


def test_word_neuron_flags_follow_the_vocabulary_table(atlas):
    """A knowledge neuron whose value slot ranks its fact's answer among its top WORD_RANK tokens is flagged, on the
    fact page and the neuron page, exactly where the vocabulary table says so."""
    from kneuron.store.vocabulary import read_vocabulary

    stored = read_vocabulary(atlas)
    assert stored, "the fixture atlas has a vocabulary table"
    for fact in atlas.facts():
        data = pages.fact_page(atlas, fact.id)
        ranks = {(v["layer"], v["neuron"]): v["answer_rank"] for v in stored if v["fact_id"] == fact.id}
        assert {(n["layer"], n["index"]): n["word"] for n in data["refined"]} == {
            key: (rank if rank < pages.WORD_RANK else None) for key, rank in ranks.items()}
    v = stored[0]
    neuron = pages.neuron_page(atlas, v["layer"], v["neuron"])
    mine = [w for w in stored if (w["layer"], w["neuron"]) == (v["layer"], v["neuron"])]
    assert [(w["fact_id"], w["promoted"]) for w in neuron["vocabulary"]] == [(w["fact_id"], w["promoted"])
                                                                           for w in mine]
    assert neuron["word_facts"] == [w["fact_id"] for w in mine if w["answer_rank"] < pages.WORD_RANK]


def test_an_atlas_that_keeps_no_scores(tmp_path):
    """keep_scores="none": the pages still show the neurons, and say that no matrices or activations were kept."""
    from fastapi.testclient import TestClient

    from kneuron.serve.app import create_app
    from serve.conftest import make_atlas

    path = make_atlas(tmp_path / "none.sqlite", keep_scores="none", studies=False)
    with Atlas.open(path, read_only=True) as atlas:
        cells = pages.prompt_cells(atlas, "capital:France", 0)
        assert cells["cells"] == [] and "keeps no score matrices" in cells["note"]
        neuron = pages.neuron_page(atlas, 0, 15)
        assert neuron["coarse"] and all(c["activation"] is None for c in neuron["coarse"])
        assert [n["name"] for n in pages.fact_page(atlas, "capital:France")["refined"]] == [
            f"L{n.layer}.N{n.index}" for n in atlas.knowledge_neurons("capital:France").neurons]
    with TestClient(create_app(path), base_url="http://localhost") as client:
        assert "keeps no score matrices" in client.get("/fact/capital%3AFrance").text
        assert "none kept (--keep-scores none)" in client.get("/neuron/L0.N15").text
