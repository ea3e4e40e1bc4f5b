"""How the CLI's results reach stdout: rich tables on a terminal, full cells in a pipe, tab-separated with --plain.

On a terminal a table fits the terminal's width (rich wraps or shortens cells to fit, as usual). When stdout is
not a terminal (``kneuron models | grep modernbert``, ``> file``, a notebook's ``!kneuron``), the width the
terminal would impose means nothing, so :class:`OutputConsole` lays everything out at :data:`PIPE_WIDTH` columns:
each table takes its natural width and no cell is wrapped, shortened or ellipsised, whatever ``COLUMNS`` says.
With ``kneuron --plain COMMAND`` (or ``KNEURON_PLAIN=1``) every table is printed as tab-separated lines instead,
on a terminal too: its title as a ``# title`` line, its header, one line per row (the cells' plain text, tabs and
line breaks in a cell turned into spaces), then an empty line.

This is the one place that decides it: every command prints its tables with ``console.print(table)`` and gets
this behaviour without knowing about it. Help texts are unwrapped here too (:func:`unwrap_paragraphs`), so that
the terminal, not the docstring's line breaks, decides where a help line ends.
"""

from __future__ import annotations

import inspect
import io
import re
from contextvars import ContextVar
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text

#: the width piped output is laid out at: wide enough that no table of kneuron's is ever cut
PIPE_WIDTH = 100_000

#: ``kneuron --plain``: tables as tab-separated lines (set anew by every invocation of the root command)
plain_output: ContextVar[bool] = ContextVar("kneuron_plain_output", default=False)


class OutputConsole(Console):
    """A rich Console for results: the terminal's width on a terminal, :data:`PIPE_WIDTH` anywhere else (also when
    ``COLUMNS`` is set), and tables as tab-separated lines while :data:`plain_output` is set."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self.is_jupyter:
            return size
        return ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 (rich's name)
        if plain_output.get() and any(isinstance(o, Table) for o in objects):
            for thing in objects:
                if isinstance(thing, Table):
                    self.file.write(table_as_tsv(thing) + "\n")
                else:
                    super().print(thing, **kwargs)
            return
        super().print(*objects, **kwargs)


def _plain(cell: Any) -> str:
    """A cell's text without styles: a Text's plain text, a string's after its rich markup, anything else as
    rich renders it without colour."""
    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell).plain
    else:
        out = io.StringIO()
        Console(file=out, width=PIPE_WIDTH, color_system=None, force_terminal=False).print(cell)
        text = out.getvalue()
    return re.sub(r"[\t\r\n]+", " ", text).strip()


def table_as_tsv(table: Table) -> str:
    """``table`` as tab-separated lines: ``# title`` (when it has one), the header, one line per row."""
    lines = []
    if table.title:
        lines.append("# " + _plain(table.title))
    columns = table.columns
    lines.append("\t".join(_plain(c.header) for c in columns))
    for index in range(table.row_count):
        lines.append("\t".join(_plain(c._cells[index]) if index < len(c._cells) else "" for c in columns))
    return "\n".join(lines) + "\n"


def unwrap_paragraphs(doc: str | None) -> str | None:
    """A docstring as help text: dedented, each paragraph on one line (so the terminal wraps it, not the
    docstring's line breaks), paragraphs apart by an empty line; lines starting a list item (``-``, ``*``, ``1.``)
    stay on their own line. Anything after a form feed (``\\f``) is dropped, as click does."""
    if doc is None:
        return None
    text = inspect.cleandoc(doc).partition("\f")[0]
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        lines: list[str] = []
        for line in paragraph.splitlines():
            line = line.strip()
            if lines and not re.match(r"([-*]|\d+\.)\s", line):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)
