"""`kneuron study languages --run ATLAS`, `study all` with and without multilingual facts, and the report's Languages
section, on atlases made from the tiny Llama."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.facts.multilingual import multilingual_facts
from kneuron.store import Atlas, run
from kneuron.studies.cross_lingual_edit import cross_lingual_edit, edit_summary
from kneuron.studies.intervals import find, format_interval
from kneuron.studies.languages import language_study, multilingual_keys, suppression_matrix
from studies.conftest import multilingual_pool
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


@pytest.fixture
def multilingual_atlas(tmp_path):
    """France and Germany in en/fr/de, Italy in en/fr/de, China in en only, Japan without a language."""
    path = tmp_path / "languages.sqlite"
    run(tiny_lm("llama"), multilingual_pool(), path, steps=3, known_only=False, progress=False, share=0.3)
    return path


def test_study_languages_stores_what_the_library_computes(multilingual_atlas, fake_load):
    result = invoke("study", "languages", "--run", str(multilingual_atlas), "--seed", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Knowledge neurons across languages: 3 fact(s) done in 2+ languages (en, fr, de)" in out
    assert "only 3 fact(s): read every mean below as n = 3 or fewer" in out
    assert "Suppress all knowledge neurons of s" in out and "Update through the English knowledge neurons" in out
    with Atlas.open(multilingual_atlas, read_only=True) as atlas:
        assert atlas.studies() == ["languages"]
        stored = atlas.results("languages")
        facts, neurons = atlas.facts(), atlas.all_refined()
        pool = [*multilingual_facts(), *atlas.facts(status=("done", "dropped"))]
        coverage = atlas.coverage()["languages"]
        aggregates = atlas.aggregates("languages")
    assert sum(bool(v) for v in neurons.values()) >= 6  # the tiny run found neurons for most facts
    lm = tiny_lm("llama")
    keys = multilingual_keys(facts)
    direct = language_study(lm, facts, neurons, seed=2) + cross_lingual_edit(lm, keys, neurons, pool=pool,
                                                                             counted=facts, seed=2)
    assert [(r["variant"], r["fact_id"], r["metric"]) for r in stored] == \
        [(r["variant"], r["fact_id"], r["metric"]) for r in direct]
    assert [r["value"] for r in stored] == pytest.approx([r["value"] for r in direct], nan_ok=True, rel=1e-6)
    assert coverage["facts"] == 9  # the three keys' versions; not China@en, not Japan
    # the printed matrix is the stored one: each cell's interval, n and paired p against random neurons
    en_fr = suppression_matrix(stored, "kn")["en", "fr"]
    cell = find(aggregates, "kn", "suppress@en>fr")
    assert (cell.n, cell.control) == (en_fr[1], "random") and cell.mean == pytest.approx(en_fr[0])
    assert format_interval(cell, percent=True) in out
    assert edit_summary(stored, "edit_kn")


def test_study_languages_refuses_an_atlas_without_multilingual_facts(atlas_path, fake_load):
    result = invoke("study", "languages", "--run", str(atlas_path))
    assert result.exit_code == 1
    assert "cannot be studied across languages: none of its done facts has a language" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not fake_load  # refused before loading the model


def test_study_languages_refuses_facts_in_one_language_only(tmp_path, fake_load):
    path = tmp_path / "one.sqlite"
    facts = [f for f in multilingual_pool() if f.id.endswith("@en")]
    run(tiny_lm("llama"), facts, path, steps=3, known_only=False, progress=False, share=0.3)
    result = invoke("study", "languages", "--run", str(path))
    assert result.exit_code == 1 and "is done (known) in 2 or more languages" in result.output


def test_study_all_includes_languages_only_when_there_are_facts_in_two_languages(multilingual_atlas, atlas_path,
                                                                                  fake_load):
    result = invoke("study", "all", "--run", str(multilingual_atlas), "--other-facts", "2")
    assert result.exit_code == 0, result.output
    assert "Knowledge neurons across languages" in result.stdout
    with Atlas.open(multilingual_atlas, read_only=True) as atlas:
        assert "languages" in atlas.studies() and "suppress_amplify" in atlas.studies()
    result = invoke("study", "all", "--run", str(atlas_path), "--other-facts", "2")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "languages: skipped (" in said and "none of its done facts has a language" in said
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert "languages" not in atlas.studies()


def test_report_has_a_languages_section(multilingual_atlas, atlas_path, fake_load):
    assert invoke("study", "languages", "--run", str(multilingual_atlas)).exit_code == 0
    result = invoke("report", "--run", str(multilingual_atlas))
    assert result.exit_code == 0, result.output
    html = multilingual_atlas.with_suffix(".html").read_text(encoding="utf-8")
    assert "<h2>Languages</h2>" in html and "3 facts (keys) done in at least two languages" in html
    assert 'alt="suppression matrix' in html and 'alt="shared and language-specific neurons per layer' in html
    assert invoke("report", "--run", str(atlas_path)).exit_code == 0
    assert "<h2>Languages</h2>" not in atlas_path.with_suffix(".html").read_text(encoding="utf-8")
