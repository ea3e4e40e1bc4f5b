"""`kneuron facts --language` and `kneuron run --language` on a tiny model (``--model tiny-<family>``, conftest)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.facts import multilingual_facts
from kneuron.facts.known import answer_ranks, known_share
from kneuron.facts.languages import language_of
from kneuron.store import Atlas

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "160"})


def _rows(output: str) -> list[list[str]]:
    """Table rows (header rows too, whose cells rich separates with ┃), cells stripped."""
    return [[cell.strip() for cell in line.replace("┃", "│").split("│")] for line in output.splitlines()
            if "│" in line or "┃" in line]


def _known(lm, facts, top):
    """(relation, language) -> [known, facts], the obviously-correct way: one language's facts at a time."""
    counts: dict[tuple[str, str], list[int]] = {}
    for fact in facts:
        ranks = answer_ranks(lm, [fact])[0]
        cell = counts.setdefault((fact.relation, language_of(fact)), [0, 0])
        cell[0] += known_share(ranks, top) > 0.5
        cell[1] += 1
    return counts


@pytest.mark.parametrize("languages", ["fr", "en,zh"])
def test_facts_counts_known_facts_per_relation_and_language(fake_load, languages):
    codes = languages.split(",")
    result = invoke("facts", "--model", "tiny-llama", "--facts", "multilingual", "--language", languages,
                    "--relations", "capital,chemical_symbol", "--top", "50", "--list")
    assert result.exit_code == 0, result.output
    facts = multilingual_facts(codes, ["capital", "chemical_symbol"])
    expected = _known(fake_load["tiny-llama"], facts, top=50)
    rows = _rows(result.stdout)
    header = rows[[row[0] for row in rows].index("relation")]
    assert header == ["relation", *codes, "all"]
    by_relation = {row[0]: row[1:] for row in rows[rows.index(header) + 1:]}
    for relation in ("capital", "chemical_symbol"):
        cells = [f"{expected[relation, c][0]}/{expected[relation, c][1]}" for c in codes]
        known = sum(expected[relation, c][0] for c in codes)
        assert by_relation[relation] == [*cells, f"{known}/{12 * len(codes)}"]
    columns = [f"{expected['capital', c][0] + expected['chemical_symbol', c][0]}/24" for c in codes]
    everything = sum(k for k, _ in expected.values())
    assert by_relation["all"] == [*columns, f"{everything}/{24 * len(codes)}"]
    listed = [row[0] for row in rows if row[0].count(":") == 1 and "@" in row[0]]
    assert listed == [f.id for f in facts]  # --list shows every fact, in the set's order


@pytest.mark.parametrize(("facts", "language", "message"), [
    ("multilingual", "it", "No facts in language 'it' in multilingual; its languages: en (English), fr (French)"),
    ("multilingual", "fr,french", "'french' is not a language code"),
    ("builtin", "fr", "builtin has no facts tagged with a language"),
    ("multilingual", "en,,fr", "'en,,fr' has an empty language code"),  # was accepted silently (issue 27, item 7)
    ("multilingual", "en,", "'en,' has an empty language code"),
    ("multilingual", ", fr", "', fr' has an empty language code"),
])
def test_an_unknown_language_is_one_line_before_the_model_loads(fake_load, facts, language, message):
    result = invoke("facts", "--model", "tiny-llama", "--facts", facts, "--language", language)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and fake_load == {}  # refused before any model was loaded
    run = invoke("run", "--model", "tiny-llama", "--facts", facts, "--language", language, "--out", "never.sqlite")
    assert run.exit_code == 1 and message in run.stderr and fake_load == {}


def test_run_keeps_only_the_chosen_languages(fake_load, tmp_path):
    out = tmp_path / "fr.sqlite"
    result = invoke("run", "--model", "tiny-llama", "--facts", "multilingual", "--language", "fr,zh",
                    "--relations", "capital", "--per-relation", "3", "--all-facts", "--steps", "2", "--out", out)
    assert result.exit_code == 0, result.output
    with Atlas.open(out, read_only=True) as atlas:
        stored = atlas.facts()
    assert [f.id for f in stored] == ["capital:France@fr", "capital:France@zh", "capital:Germany@fr"]
    french = {f.id: f for f in multilingual_facts(["fr"])}
    assert stored[0].templates == french["capital:France@fr"].templates


def test_languages_come_from_the_ids_of_any_facts_file(fake_load, tmp_path):
    path = tmp_path / "tagged.jsonl"
    path.write_text(
        '{"relation": "capital", "templates": ["The capital of [X] is [Y].", "The capital city of [X] is [Y]."]}\n'
        '{"subject": "France", "relation": "capital", "object": "Paris", "id": "capital:France@en"}\n'
        '{"subject": "Germany", "relation": "capital", "object": "Berlin", "id": "capital:Germany@en"}\n'
        '{"subject": "Japan", "relation": "capital", "object": "Tokyo"}\n'
    )
    result = invoke("facts", "--model", "tiny-llama", "--facts", path, "--top", "30")
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert rows[[row[0] for row in rows].index("relation")] == ["relation", "en", "(none)", "all"]
    kept = invoke("facts", "--model", "tiny-llama", "--facts", path, "--top", "30", "--language", "en", "--list")
    assert kept.exit_code == 0, kept.output
    assert "capital:Germany@en" in kept.stdout and "capital:Japan" not in kept.stdout


def test_run_min_languages_keeps_the_facts_known_in_several_languages(fake_load, tmp_path):
    path = tmp_path / "tagged.jsonl"
    path.write_text(
        '{"relation": "capital", "templates": ["The capital of [X] is [Y].", "The capital city of [X] is [Y]."]}\n'
        '{"subject": "France", "relation": "capital", "object": "Paris", "id": "capital:France@en"}\n'
        '{"subject": "France", "relation": "capital", "object": "Paris", "id": "capital:France@fr"}\n'
        '{"subject": "Germany", "relation": "capital", "object": "Berlin", "id": "capital:Germany@en"}\n'
        '{"subject": "Japan", "relation": "capital", "object": "Tokyo", "id": "capital:Japan@en"}\n'
        '{"subject": "Japan", "relation": "capital", "object": "Xylophone", "id": "capital:Japan@de"}\n'
    )
    out = tmp_path / "two.sqlite"
    # top 30 of the tiny vocabulary: every answer but the unknown-token one (Xylophone) counts as known
    result = invoke("run", "--model", "tiny-llama", "--facts", path, "--min-languages", "2", "--top", "30",
                    "--steps", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 of 5 facts kept" in " ".join(result.stderr.split())
    with Atlas.open(out, read_only=True) as atlas:
        assert [f.id for f in atlas.facts()] == ["capital:France@en", "capital:France@fr"]
    none = invoke("run", "--model", "tiny-llama", "--facts", path, "--min-languages", "3", "--top", "30",
                  "--steps", "2", "--out", tmp_path / "three.sqlite")
    assert none.exit_code == 1 and "in 3 languages or more" in none.stderr
    assert not (tmp_path / "three.sqlite").exists()
