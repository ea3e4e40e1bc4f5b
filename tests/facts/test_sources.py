"""The fact-source registry: every way to get facts has a name and a description, load_facts and the CLI's --facts
go through it, and a new source is one registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from kneuron.errors import FactError
from kneuron.facts import Fact, FactSource, fact_source, fact_sources, load_facts, register_source
from kneuron.facts import sources as sources_module
from kneuron.facts.sources import sources_help

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "facts"


def test_every_source_has_a_name_and_a_description():
    names = [s.name for s in fact_sources()]
    assert names[:2] == ["builtin", "multilingual"] and len(set(names)) == len(names)
    assert {"jsonl", "csv", "multilingual-jsonl", "lama", "kn-bags", "folder"} <= set(names)
    assert all(s.description.strip() for s in fact_sources())
    assert [s.name for s in fact_sources() if s.is_set] == ["builtin", "multilingual"]
    assert fact_source("builtin").read(None) == load_facts("builtin")
    with pytest.raises(FactError, match="No fact source 'nope'; there are builtin, multilingual"):
        fact_source("nope")


def test_the_cli_help_lists_the_registered_sources():
    text = sources_help()
    assert text.startswith("builtin, multilingual, or a facts file or folder (")
    assert all(s.name in text for s in fact_sources())


@pytest.fixture
def restored_registry():
    saved = dict(sources_module._SOURCES)
    yield
    sources_module._SOURCES.clear()
    sources_module._SOURCES.update(saved)


def test_a_new_source_is_one_registration(tmp_path, restored_registry):
    mine = [Fact("France", "capital", "Paris", ("The capital of [X] is [Y].",))]
    register_source(FactSource("mine", "two facts of mine", read=lambda relations: list(mine)))
    assert load_facts("mine") == mine
    assert load_facts("mine", relations=["other"]) == []

    def read_txt(path: Path) -> list[Fact]:
        subject, obj = path.read_text(encoding="utf-8").split()
        return [Fact(subject, "capital", obj, ("The capital of [X] is [Y].",))]

    register_source(FactSource("txt", "one fact as 'subject object' (.txt)", read=read_txt,
                               claims=lambda path: path.suffix == ".txt"))
    (tmp_path / "one.txt").write_text("Japan Tokyo", encoding="utf-8")
    assert load_facts(tmp_path / "one.txt")[0].object == "Tokyo"
    assert sources_help().startswith("builtin, multilingual, mine, or") and "txt" in sources_help()
    with pytest.raises(FactError, match="registered already"):
        register_source(FactSource("mine", "again", read=lambda relations: []))


def test_files_no_source_reads_say_why(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(FactError, match="has no facts in it"):
        load_facts(tmp_path / "empty.jsonl")
    with pytest.raises(FactError, match="No facts file or folder at .*Give 'builtin', 'multilingual'"):
        load_facts(tmp_path / "missing.jsonl")
