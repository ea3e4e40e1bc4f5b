"""The shared display pieces: a stored figure is the stored aggregate's text (or the bare mean with what to re-run),
and a table that does not fit the terminal becomes one ``measure: value`` line per cell, none cut or folded."""

from __future__ import annotations

from rich.console import Console

from kneuron.studies.display import fit_table, natural_width, stored_figure
from kneuron.studies.intervals import aggregate_rows, find, format_interval

ROWS = [{"variant": v, "metric": "suppress", "relation": "r", "fact_id": f"f{i}", "value": x}
        for i in range(6) for v, x in (("kn", -0.5 - 0.05 * i), ("random", 0.01 * (i - 3)))]


def render(table, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    with console.capture() as captured:
        console.print(table)
    return captured.get()


def test_stored_figure_is_the_stored_aggregate_or_says_what_to_rerun():
    aggregates = aggregate_rows(ROWS, {"kn": "random"})
    stored = find(aggregates, "kn", "suppress")
    assert stored_figure(aggregates, ROWS, "toy", "kn", "suppress") == format_interval(stored, percent=True)
    assert stored_figure(aggregates, ROWS, "toy", "kn", "suppress", name_control=False).endswith(f"p = {stored.p:.2g}")
    assert stored_figure((), ROWS, "toy", "kn", "suppress") == \
        "−62.5%, n = 6, no interval stored (re-run `kneuron study toy`)"
    assert stored_figure((), ROWS, "toy", "kn", "missing") == "–"


def test_fit_table_keeps_its_columns_when_they_fit_and_goes_one_value_per_line_when_not():
    aggregates = aggregate_rows(ROWS, {"kn": "random"})
    cells = [stored_figure(aggregates, ROWS, "toy", v, "suppress") for v in ("kn", "random")]
    header, lines = ["measure", "knowledge neurons", "random neurons"], [["suppress, own prompts", *cells]]
    wide = render(fit_table("t", header, lines, None), 200)
    assert natural_width(header, lines) > 80 and all(cell in wide.splitlines()[3] for cell in cells)
    narrow = render(fit_table("t", header, lines, 80), 80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert any("knowledge neurons" in line and cells[0] in line for line in narrow.splitlines())  # whole
    assert any("random neurons" in line and cells[1] in line for line in narrow.splitlines())
