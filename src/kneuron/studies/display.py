"""Two things every study's terminal summary and report section share: one stored mean as text
(:func:`stored_figure`: its 95% interval, n and paired p, read from the stored aggregates, never recomputed) and a
table that reads at the terminal's width (:func:`fit_table`: the usual columns when they fit, else one
``measure: value`` line per cell).

Example:
    >>> stored_figure(aggregates, rows, "vocabulary", "kn", "answer_top10", percent=True, signed=False)
    '37.5% [13.7, 69.4], n = 8, p = 0.031 vs random'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rich.table import Table
from rich.text import Text

from kneuron.studies.intervals import figure, find, format_interval


def stored_figure(aggregates: Sequence[dict], rows: Sequence[dict], study: str, variant: str, metric: str,
                  relation: str = "", *, percent: bool = True, signed: bool | None = None, digits: int = 1,
                  name_control: bool = True) -> str:
    """One mean over facts as shown everywhere: ``+12.3% [+4.0, +20.1], n = 16, p = 0.003 vs random`` from the
    stored aggregate (``name_control`` False: without `` vs random``, for a table whose heading names the control;
    ``signed``: whether a percentage shows its sign, None: all but a share of facts); on an atlas studied before
    aggregates were stored, the bare mean of ``rows`` with its n and what to re-run; a dash when neither."""
    stored = find(aggregates, variant, metric, relation)
    if stored.n:
        return format_interval(stored if name_control else replace(stored, control=""), percent=percent,
                               digits=digits, signed=signed)
    return figure(aggregates, variant, metric, relation, rows=rows, study=study, percent=percent, digits=digits,
                  signed=True if signed is None else signed)


def natural_width(header: Sequence[str], lines: Sequence[Sequence[str]]) -> int:
    """The columns a table of ``header`` and ``lines`` needs without wrapping a cell (rich's padding included)."""
    widths = [max([len(str(h))] + [len(Text.from_markup(c).plain) if isinstance(c, str) else len(str(c))
                                   for c in column]) for h, *column in zip(header, *lines, strict=True)] \
        if lines else [len(h) for h in header]
    return sum(widths) + 3 * len(widths)


def fit_table(title: str, header: Sequence[str], lines: Sequence[Sequence[str | Text]], width: int | None, *,
              caption: str = "") -> Table:
    """``lines`` as a rich table under ``header`` when it fits ``width`` columns (None: any width, as in a pipe),
    else as two columns: each line's first cell on a line of its own, then one indented line per other column
    (``  header: cell``), so that no cell is cut or folded at 80 columns. Cells are plain text (no markup)."""
    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False,
                  caption=Text(caption) if caption else None, caption_justify="left")
    plain = [[c.plain if isinstance(c, Text) else str(c) for c in line] for line in lines]
    if width is None or natural_width(header, plain) <= width:
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i == 0 else "right")
        for line in lines:
            table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in line))
        return table
    value = max((len(c) for line in plain for c in line[1:]), default=0)
    labels = max([len(header[0]), *(len(line[0]) for line in plain), *(len(h) + 2 for h in header[1:])])
    label_width = max(12, min(labels, width - value - 5))  # the labels wrap, the values do not
    table.add_column(header[0], max_width=label_width, overflow="fold")
    table.add_column("value", justify="right", min_width=min(value, width - label_width - 5), overflow="fold")
    for line in plain:
        table.add_row(Text(line[0], style="bold"), "")
        for column, cell in zip(header[1:], line[1:], strict=True):
            table.add_row(Text(f"  {column}"), Text(cell))
    return table
