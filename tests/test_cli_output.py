"""The CLI's output at 80 columns and in a pipe: every command's --help, tables that a pipe never cuts, --plain.

A terminal is simulated with rich's ``TTY_COMPATIBLE=1`` (what a terminal says about itself) and ``COLUMNS=80``;
typer's CliRunner captures stdout in a buffer, which is not a terminal, for the piped case.
"""

from __future__ import annotations

import re

import pytest
import typer.main
from rich.text import Text
from typer.testing import CliRunner

from kneuron import cli
from kneuron.cli.output import unwrap_paragraphs
from kneuron.studies.registry import registered_studies

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TERMINAL = {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
PIPE = {"COLUMNS": "80", "TTY_COMPATIBLE": None}


def _commands() -> list[tuple[list[str], object]]:
    """Every visible command and group, as its argv and its click object (the root first)."""
    root = typer.main.get_command(cli.app)
    found = [([], root)]

    def walk(group, path):
        for name, command in group.commands.items():
            if command.hidden:
                continue
            found.append(([*path, name], command))
            if hasattr(command, "commands"):
                walk(command, [*path, name])

    walk(root, [])
    return found


COMMANDS = _commands()
IDS = [" ".join(path) or "kneuron" for path, _ in COMMANDS]


def _help(path: list[str], env: dict) -> str:
    result = runner.invoke(cli.app, [*path, "--help"], env=env)
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def _words(text: str) -> str:
    return " ".join(text.split())


def test_every_command_is_checked():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"models", "run", "find", "study", "study list", "report", "serve"} <= names
    assert {f"study {s.name}" for s in registered_studies()} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_fits_80_columns_on_a_terminal_and_is_whole_in_a_pipe(path, command):
    on_terminal = _help(path, TERMINAL)
    too_long = [line for line in on_terminal.splitlines() if len(line) > 80]
    assert not too_long, too_long

    piped = _help(path, PIPE)
    assert "…" not in piped
    # each paragraph of the help is one line of source text (the terminal wraps it, not the docstring) and is
    # printed whole, in order
    assert command.help
    for paragraph in command.help.split("\n\n"):
        assert all(re.match(r"([-*]|\d+\.)\s", line) for line in paragraph.splitlines()[1:]), paragraph
        assert _words(Text.from_markup(paragraph).plain) in _words(piped)


def test_unwrap_paragraphs_joins_lines_and_keeps_paragraphs_and_list_items():
    doc = """First line
        goes on here.

        Second paragraph
        with two lines.

        - an item
          continued
        - another
        \f
        hidden
    """
    assert unwrap_paragraphs(doc) == ("First line goes on here.\n\nSecond paragraph with two lines.\n\n"
                                      "- an item continued\n- another")
    assert unwrap_paragraphs(None) is None


def test_piped_tables_keep_every_cell_whole():
    result = runner.invoke(cli.app, ["models"], env=PIPE)
    assert result.exit_code == 0
    assert "…" not in result.output
    line = next(line for line in result.output.splitlines() if "modernbert" in line)
    assert "model.layers.{i}.mlp.Wo" in line and "masked" in line and "linear" in line

    listing = runner.invoke(cli.app, ["study", "list"], env=PIPE)
    assert listing.exit_code == 0 and "…" not in listing.output
    for study in registered_studies():  # each study's row on one line, its description whole
        assert any(study.summary_line in line and line.split()[0] == study.name for line in listing.output.splitlines())


def test_plain_prints_tables_tab_separated():
    result = runner.invoke(cli.app, ["--plain", "models"], env=TERMINAL)  # --plain also on a terminal
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "# Families (detected from config.model_type)"
    assert lines[1].split("\t") == ["family", "kind", "FFN output projection", "layout", "model types"]
    modern = next(line for line in lines if line.startswith("modernbert\t")).split("\t")
    assert modern[:4] == ["modernbert", "masked", "model.layers.{i}.mlp.Wo", "linear"]
    assert "# Embedded models (--model NAME)" in lines
    assert not ANSI.search(result.output) and "┃" not in result.output

    again = runner.invoke(cli.app, ["models"], env=PIPE)  # the next invocation without --plain draws tables
    assert "\t" not in again.output and "modernbert" in again.output
