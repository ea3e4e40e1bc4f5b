"""run validates every fact before it creates the atlas, and a run that fails before its first fact leaves no
atlas file behind it created (issue #10, item 4)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.errors import FactError, KneuronError
from kneuron.facts import Fact
from kneuron.store import Atlas, run, runs
from store.helpers import CAPITAL, RUN_ARGS, dump, tiny_facts, tiny_model, write_facts_file

runner = CliRunner()


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


BAD = [("[Y]land", "Paris"), ("[X] Republic", "Paris"), ("France", "Par[Y]is"), ("France", "[X]")]


def unchecked_fact(subject: str, obj: str) -> Fact:
    """A capital Fact built around Fact's own check, to write a bad facts file or to reach run's check."""
    fact = object.__new__(Fact)
    for name, value in (("subject", subject), ("relation", "capital"), ("object", obj), ("templates", CAPITAL),
                        ("id", f"capital:{subject}")):
        object.__setattr__(fact, name, value)
    return fact


@pytest.mark.parametrize("bad", BAD, ids=lambda b: f"{b[0]}->{b[1]}")
def test_a_fact_with_a_placeholder_in_its_subject_or_object_is_refused_before_any_file(lm, tmp_path, bad):
    with pytest.raises(FactError, match=r"capital:.*\[[XY]\]"):  # Fact itself refuses it ...
        Fact(bad[0], "capital", bad[1], CAPITAL)
    unchecked = unchecked_fact(*bad)  # ... and so does run, for a Fact built around that check
    path = tmp_path / "new.sqlite"
    with pytest.raises(FactError, match=r"\[[XY]\]"):
        run(lm, [*tiny_facts()[:2], unchecked], path, **RUN_ARGS)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_it_in_one_line_and_writes_no_file(fake_load, tmp_path):
    facts = write_facts_file(tmp_path / "facts.jsonl", [*tiny_facts()[:2], unchecked_fact(*BAD[0])])
    out = tmp_path / "runs" / "new.sqlite"
    result = runner.invoke(cli.app, ["run", "--model", "tiny-llama", "--facts", str(facts), "--steps", "2",
                                     "--all-facts", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "[Y]land" in errors[0], result.stderr
    assert not out.parent.exists()  # not even its folder


def test_an_existing_atlas_is_untouched_by_a_bad_fact(lm, tmp_path):
    path = tmp_path / "a.sqlite"
    run(lm, tiny_facts()[:2], path, **RUN_ARGS)
    before = dump(path)
    with pytest.raises(FactError):
        run(lm, [*tiny_facts()[:3], unchecked_fact(*BAD[0])], path, **RUN_ARGS)
    assert dump(path) == before


@pytest.mark.parametrize("error", [KneuronError("the known filter failed"), KeyboardInterrupt()])
def test_a_run_failing_before_its_first_fact_removes_the_atlas_it_created(lm, tmp_path, monkeypatch, error):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(runs, "classify", failing)
    path = tmp_path / "new.sqlite"
    with pytest.raises(type(error)):
        run(lm, tiny_facts()[:2], path, **RUN_ARGS)
    assert list(tmp_path.iterdir()) == []


def test_a_run_failing_after_its_first_fact_keeps_it(lm, tmp_path, monkeypatch):
    original, calls = Atlas.store_fact, []

    def store_then_fail(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Atlas, "store_fact", store_then_fail)
    path = tmp_path / "kept.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run(lm, tiny_facts()[:3], path, **RUN_ARGS)
    with Atlas.open(path, read_only=True) as atlas:
        assert len(atlas.facts()) == 1


def test_an_existing_atlas_is_never_removed_on_failure(lm, tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    run(lm, tiny_facts()[:1], path, **{**RUN_ARGS, "known_only": False})
    with Atlas.open(path) as atlas, atlas.transaction() as db:  # no done fact: registered, then killed
        db.execute("UPDATE facts SET status = 'pending'")
        db.execute("DELETE FROM neurons")
        db.execute("DELETE FROM prompts")

    def failing(*args, **kwargs):
        raise KneuronError("failed")

    monkeypatch.setattr(runs, "classify", failing)
    with pytest.raises(KneuronError):
        run(lm, tiny_facts()[:2], path, **RUN_ARGS)
    assert path.exists()
