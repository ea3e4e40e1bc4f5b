"""A damaged atlas: every command that reads it, and run, exits 1 with one `error:` line and says how to
recover; run never reports facts "already done" from a damaged file (issue #10, item 3)."""

from __future__ import annotations

import random
import shutil

import pytest
from typer.testing import CliRunner

from kneuron import cli
from store.helpers import tiny_facts, write_facts_file

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory, request):
    """A real small atlas (10 facts, studies stored) written by the CLI, and its facts file."""
    folder = tmp_path_factory.mktemp("corrupt")
    facts = write_facts_file(folder / "facts.jsonl", tiny_facts())
    path = folder / "atlas.sqlite"
    monkeypatch = pytest.MonkeyPatch()
    request.addfinalizer(monkeypatch.undo)
    _fake_load(monkeypatch)
    result = runner.invoke(cli.app, run_args(facts, path))
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.app, ["study", "layers", "--run", str(path)])
    assert result.exit_code == 0, result.output
    return path, facts


def _fake_load(monkeypatch):
    import kneuron.models
    from tiny_models import tiny_lm

    real = kneuron.models.load
    monkeypatch.setattr(kneuron.models, "load", lambda model=None, **kw: tiny_lm(model[5:])
                        if model and model.startswith("tiny-") else real(model, **kw))


def run_args(facts, path):
    return ["run", "--model", "tiny-llama", "--facts", str(facts), "--steps", "3", "--all-facts", "--out", str(path)]


def damage(source, target, where: str) -> None:
    """Copy the atlas and overwrite one whole page with random bytes: the header page, a middle page, the last."""
    shutil.copy(source, target)
    data = bytearray(target.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    page = {"header": 0, "middle": pages // 2, "last": pages - 1}[where]
    noise = random.Random(page).randbytes(page_size)
    data[page * page_size:(page + 1) * page_size] = noise
    target.write_bytes(bytes(data))


COMMANDS = {
    "atlas": lambda p, f: ["atlas", "--run", str(p)],
    "atlas --relation": lambda p, f: ["atlas", "--run", str(p), "--relation", "capital"],
    "atlas --fact": lambda p, f: ["atlas", "--run", str(p), "--fact", "capital:France"],
    "export": lambda p, f: ["export", "--run", str(p), "--to", str(p.with_suffix(".csv"))],
    "study": lambda p, f: ["study", "layers", "--run", str(p)],
    "report": lambda p, f: ["report", "--run", str(p)],
    "run": lambda p, f: run_args(f, p),
}


@pytest.mark.parametrize("where", ["header", "middle", "last"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_refuses_a_damaged_atlas_in_one_line(made, tmp_path, monkeypatch, where, name):
    source, facts = made
    _fake_load(monkeypatch)
    path = tmp_path / "bad.sqlite"
    damage(source, path, where)
    before = path.read_bytes()
    result = runner.invoke(cli.app, COMMANDS[name](path, facts), env={"COLUMNS": "400"})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    if where == "header":  # no SQLite header: nothing proves it was an atlas
        assert "not a kneuron atlas (not an SQLite database, or an atlas whose first page is damaged)" in errors[0]
    else:
        assert "is damaged (" in errors[0], errors[0]
        assert "Start a new atlas: `kneuron run --out runs/NEW.sqlite`" in errors[0] and ".recover" in errors[0]
    assert "already done" not in result.stderr
    assert path.read_bytes() == before  # nothing written into it
    assert not path.with_suffix(".html").exists() and not path.with_suffix(".csv").exists()


DAMAGED_CELLS = {
    "text that is not UTF-8": "UPDATE facts SET subject = CAST(x'ff00fe' AS TEXT) WHERE id = 'capital:France'",
    "a meta value that is not JSON": "UPDATE meta SET value = '{\"steps\": ' WHERE key = 'params'",
    "templates that are not JSON": "UPDATE facts SET templates = '[\"The capital' WHERE id = 'capital:France'",
    "a BLOB of the wrong size": "UPDATE prompts SET scores = x'0000' WHERE fact_id = 'capital:France'",
}


#: what a command never decodes (export copies templates as text; only Atlas.prompt_scores reads score BLOBs)
UNREAD = {("export", "templates that are not JSON")}


@pytest.mark.parametrize("cell", list(DAMAGED_CELLS))
@pytest.mark.parametrize("name", ["atlas", "atlas --fact", "export", "study", "report"])
def test_damaged_values_that_pass_the_integrity_check_give_one_line(made, tmp_path, monkeypatch, cell, name):
    """Bytes damaged inside a value leave SQLite's page structure whole: what reads them says the atlas is
    damaged, in one line, instead of a decoding traceback."""
    import sqlite3

    source, facts = made
    _fake_load(monkeypatch)
    path = tmp_path / "bad.sqlite"
    shutil.copy(source, path)
    db = sqlite3.connect(path)
    db.execute(DAMAGED_CELLS[cell])
    db.commit()
    db.close()
    result = runner.invoke(cli.app, COMMANDS[name](path, facts), env={"COLUMNS": "400"})
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), \
        repr(result.exception)
    if (name, cell) in UNREAD or (cell == "a BLOB of the wrong size"):  # no command reads the score BLOBs
        assert result.exit_code == 0, result.output
        return
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "is damaged (" in errors[0], result.stderr


def test_prompt_scores_of_a_wrong_size_blob_say_the_atlas_is_damaged(made, tmp_path):
    import sqlite3

    from kneuron.errors import KneuronError
    from kneuron.store import Atlas

    path = tmp_path / "bad.sqlite"
    shutil.copy(made[0], path)
    db = sqlite3.connect(path)
    db.execute("UPDATE prompts SET scores = x'0000' WHERE fact_id = 'capital:France' AND idx = 1")
    db.commit()
    db.close()
    with Atlas.open(path, read_only=True) as atlas, pytest.raises(KneuronError, match="is damaged.*prompt 1"):
        atlas.prompt_scores("capital:France")
