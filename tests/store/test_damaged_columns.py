"""Values of the wrong kind in an atlas that opens (text in a layer or score column, non-JSON templates): every
CLI command that reads the atlas says it is damaged in one line, leaves no -wal / -shm it made beside it, and a
resumed run refuses it too (issue 27 items 6 and 7)."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from kneuron import cli
from store.test_corrupt import COMMANDS, _fake_load, made  # noqa: F401  (made: the module's atlas fixture)

runner = CliRunner()

DAMAGE = {
    "text in a layer": "UPDATE neurons SET layer = 'abc'",
    "text in a score": "UPDATE neurons SET score = 'abc'",
    "a fractional neuron": "UPDATE neurons SET neuron = 1.5",
    "a layer outside the model": "UPDATE neurons SET layer = 99",
    "templates that are not JSON": "UPDATE facts SET templates = '{not json'",
    "a coarse neuron of no prompt": "UPDATE neurons SET prompt = prompt + 40 WHERE kind = 'coarse'",
    "text in n_layers": "UPDATE meta SET value = '\"many\"' WHERE key = 'n_layers'",
}
READERS = ["atlas", "atlas --relation", "atlas --fact", "study", "report", "run"]
#: the issue's cases, and every command that reads the damaged column: these must refuse
MUST_REFUSE = {(name, damage) for name in ("atlas", "atlas --fact") for damage in DAMAGE} - {
    ("atlas", "a coarse neuron of no prompt")} | {("run", "templates that are not JSON")} | {
    (name, "text in n_layers") for name in READERS}


def _damaged_copy(source, target, sql: str) -> None:
    shutil.copy(source, target)
    db = sqlite3.connect(target, isolation_level=None)
    db.execute(sql)
    db.execute("PRAGMA journal_mode = DELETE")  # no -wal / -shm left by this connection
    db.close()


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("name", READERS)
def test_a_value_of_the_wrong_kind_gives_one_line(made, tmp_path, monkeypatch, damage, name):  # noqa: F811
    source, facts = made
    _fake_load(monkeypatch)
    path = tmp_path / "bad.sqlite"
    _damaged_copy(source, path, DAMAGE[damage])
    result = runner.invoke(cli.app, COMMANDS[name](path, facts), env={"COLUMNS": "400"})
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), \
        repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if result.exit_code == 0:  # a command that never reads that column (report reads only the studies' rows)
        assert (name, damage) not in MUST_REFUSE, result.output
    else:
        assert result.exit_code == 1 and len(errors) == 1 and "is damaged (" in errors[0], result.output
    if name != "run":  # readers leave the folder as they found it
        assert not [f for f in os.listdir(tmp_path) if f.endswith(("-wal", "-shm"))]
