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
        assert "kneuron run --out runs/NEW.sqlite" in errors[0] and ".recover" in errors[0]
    assert "already done" not in result.stderr
    assert path.read_bytes() == before  # nothing written into it
    assert not path.with_suffix(".html").exists() and not path.with_suffix(".csv").exists()
