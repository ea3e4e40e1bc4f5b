"""Every path option given a dangling symbolic link, a FIFO, a folder or an empty path: one line, no traceback, no
hang (a FIFO opened for reading blocks until someone writes to it), nothing written (issue 27 items 6 and 7)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from kneuron import cli
from store.test_corrupt import _fake_load, made, run_args  # noqa: F401  (made: the module's atlas fixture)

runner = CliRunner()


def _special(tmp_path, kind: str) -> str:
    target = tmp_path / f"{kind}.sqlite"
    if kind == "dangling":
        os.symlink(tmp_path / "nowhere.sqlite", target)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    elif kind == "empty":
        return ""
    return str(target)


KINDS = ["dangling", "fifo", "folder", "empty"]


def _refused(result) -> str:
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (1, 2), result.output
    return result.output


@pytest.mark.parametrize("kind", KINDS)
def test_run_out(made, tmp_path, monkeypatch, kind):  # noqa: F811
    _fake_load(monkeypatch)
    facts = made[1]
    path = _special(tmp_path, kind)
    output = _refused(runner.invoke(cli.app, [*run_args(facts, "x")[:-1], path], env={"COLUMNS": "400"}))
    if kind == "dangling":
        assert "symbolic link" in output and not (tmp_path / "nowhere.sqlite").exists()
    if kind == "fifo":
        assert "FIFO" in output


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", [["atlas"], ["study", "layers"], ["report"], ["export", "--to", "out.csv"],
                                     ["edit", "--fact", "capital:France", "--new", "Rome"],
                                     ["erase", "--relation", "capital"]])
def test_run_option_of_every_reader(tmp_path, monkeypatch, kind, command):
    _fake_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    _refused(runner.invoke(cli.app, [*command, "--run", _special(tmp_path, kind)], env={"COLUMNS": "400"}))


@pytest.mark.parametrize("option", [["report", "--out"], ["export", "--to"],
                                    ["edit", "--fact", "capital:France", "--new", "Rome", "--save"],
                                    ["edit", "--fact", "capital:France", "--new", "Rome", "--save-model"],
                                    ["erase", "--relation", "capital", "--save"]])
def test_an_empty_output_path_is_refused(made, tmp_path, monkeypatch, option):  # noqa: F811
    """``--save ''`` wrote edit.safetensors into the current folder: an empty path is refused before any work."""
    _fake_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    *command, flag = option
    output = _refused(runner.invoke(cli.app, [*command, "--run", str(made[0]), flag, ""], env={"COLUMNS": "400"}))
    assert "empty path" in output
    assert os.listdir(tmp_path) == []


def test_an_empty_facts_source_is_refused(tmp_path, monkeypatch):
    """``--facts ''`` read the current folder as a folder of facts."""
    _fake_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    output = _refused(runner.invoke(cli.app, ["run", "--model", "tiny-llama", "--facts", "", "--out", "a.sqlite"],
                                    env={"COLUMNS": "400"}))
    assert "empty facts source" in output and os.listdir(tmp_path) == []
