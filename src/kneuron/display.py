"""The HTML pieces behind the rich display of kneuron's objects in Jupyter (their ``_repr_html_``).

A notebook shows a :class:`~kneuron.attribution.NeuronScores` as a layers × neurons picture with the answer's
probability and the completeness gap, :class:`~kneuron.attribution.KnowledgeNeurons` as a table of its neurons,
an :class:`~kneuron.store.Atlas` as a summary and an :class:`~kneuron.interventions.Edit` as what it changes. This
module holds what those displays share: escaped text, numbers, tables and the picture (:func:`grid_svg`).

Every piece is self-contained HTML: inline styles (a notebook has no stylesheet of ours), the picture as inline
SVG, no scripts, nothing fetched. Every string is escaped, because subjects, prompts and answers are user data.
Nothing here runs a model: a display only formats what the object already holds.

The picture of a big model (30 layers × 1536 neurons for SmolLM2, 18 × 2048 for Gemma) is downsampled by
max-pooling ``|score|`` over blocks of neurons (and of layers, past :data:`MAX_ROWS` layers; :func:`pool_abs`), and
drawn with :data:`LEVELS` shades, one SVG path per shade, so that it stays small (well under 200 KB) whatever the
model. Cells holding a marked neuron (a fact's refined or coarse neurons) are outlined or dotted.

This module sits below every layer of kneuron (it imports nothing of kneuron), so that attribution and the layers
above it can use it.

Example:
    >>> from kneuron.display import grid_svg
    >>> svg = grid_svg(scores.scores, refined=[(5, 2)])   # what NeuronScores._repr_html_ draws
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

#: the picture has at most this many rows (layers are pooled in blocks past it) and columns (blocks of neurons)
MAX_ROWS, MAX_COLUMNS = 64, 128
#: the shades of the picture (a block below half a shade of the largest |score| is left white)
LEVELS = 8
#: the picture's width and height in pixels at most
WIDTH, HEIGHT = 640, 360
#: the darkest shade (|score| at the maximum), and the colours of the marks
DARK, REFINED_COLOUR, COARSE_COLOUR = (178, 24, 43), "#111111", "#2166ac"

_CELL = "border:1px solid #ccc;padding:2px 6px;"
BOX = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:13px;line-height:1.4;"


def escape(text: object) -> str:
    """``text`` as HTML-escaped text (quotes too, so it is safe in attributes)."""
    return html.escape(str(text), quote=True)


def number(value: float | None, spec: str = ".4g") -> str:
    """``value`` formatted with ``spec``, or a dash when it is None or not finite."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    return format(float(value), spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A small table with inline styles; ``header`` is text (escaped here), cells are HTML; the first ``left``
    columns are left-aligned, the others right-aligned."""
    def align(i: int) -> str:
        return "text-align:left;" if i < left else "text-align:right;"

    head = "".join(f'<th style="{_CELL}{align(i)}background:#f2f2f2">{escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}{align(i)}">{c}</td>' for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f'<table style="border-collapse:collapse;margin:4px 0"><thead><tr>{head}</tr></thead><tbody>{body}' \
           "</tbody></table>"


def details(summary: str, body: str) -> str:
    """A folded section: ``summary`` (text, escaped here) opens ``body`` (HTML)."""
    return f'<details style="margin:4px 0"><summary>{escape(summary)}</summary>{body}</details>'


def box(title: str, *parts: str) -> str:
    """One object's display: a bold title (text, escaped here) over its parts (HTML)."""
    return (f'<div class="kneuron" style="{BOX}"><div style="font-weight:600;margin-bottom:4px">{escape(title)}</div>'
            + "".join(parts) + "</div>")


def line(*items: str) -> str:
    """One line of small facts (HTML items joined by ``·``)."""
    return '<div style="color:#444">' + " · ".join(item for item in items if item) + "</div>"


def warning(text: str) -> str:
    """A highlighted line (text, escaped here)."""
    return f'<div style="background:#fff4e0;border-left:4px solid #e69500;padding:2px 8px;margin:4px 0">' \
           f"{escape(text)}</div>"


# ---------------------------------------------------------------------------------------------------- the picture


@dataclass(frozen=True)
class Pooled:
    """A layers × neurons grid max-pooled over blocks: ``grid[r, c]`` is the largest ``|score|`` of layers
    ``r*rows .. r*rows+rows-1`` and neurons ``c*columns .. c*columns+columns-1`` (non-finite scores count 0)."""

    grid: torch.Tensor
    rows: int
    columns: int
    layers: int
    neurons: int
    non_finite: int

    def cell(self, layer: int, index: int) -> tuple[int, int]:
        """The (row, column) of the block holding neuron ``(layer, index)``."""
        return layer // self.rows, index // self.columns


def pool_abs(scores: torch.Tensor, max_rows: int = MAX_ROWS, max_columns: int = MAX_COLUMNS) -> Pooled:
    """``|scores|`` (layers × neurons) max-pooled into at most ``max_rows`` × ``max_columns`` blocks (blocks of
    ``ceil(layers / max_rows)`` layers and ``ceil(neurons / max_columns)`` neurons; the last ones may be narrower)."""
    values = scores.detach().to("cpu", torch.float64)
    if values.dim() != 2:
        values = values.reshape(values.shape[0] if values.dim() else 1, -1)
    layers, neurons = values.shape
    finite = torch.isfinite(values)
    values = torch.where(finite, values.abs(), torch.zeros((), dtype=torch.float64))
    rows, columns = max(1, math.ceil(layers / max_rows)), max(1, math.ceil(neurons / max_columns))
    n_rows, n_columns = math.ceil(layers / rows), math.ceil(neurons / columns)
    padded = torch.zeros(n_rows * rows, n_columns * columns, dtype=torch.float64)
    padded[:layers, :neurons] = values
    grid = padded.reshape(n_rows, rows, n_columns, columns).amax(dim=(1, 3))
    return Pooled(grid, rows, columns, layers, neurons, int((~finite).sum()))


def _shade(level: int) -> str:
    """The colour of shade ``level`` (1..LEVELS): from near white to :data:`DARK`."""
    t = level / LEVELS
    red, green, blue = (round(255 + (c - 255) * t) for c in DARK)
    return f"#{red:02x}{green:02x}{blue:02x}"


def _span(first: int, last: int, prefix: str) -> str:
    return f"{prefix}{first}" if first == last else f"{prefix}{first}–{last}"


def grid_svg(scores: torch.Tensor, *, refined: Iterable[tuple[int, int]] = (),
             coarse: Iterable[tuple[int, int]] = (), title: str = "") -> str:
    """The layers × neurons picture of ``scores`` as inline SVG: each cell the largest ``|score|`` of its block
    (:func:`pool_abs`) in :data:`LEVELS` shades, layer 0 at the top; the blocks holding a ``refined`` neuron
    outlined in black, those holding a ``coarse`` one (and no refined one) dotted in blue. Followed by a one-line
    legend (block sizes, the largest |score|)."""
    pooled = pool_abs(scores)
    def inside(keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        keys = [(int(layer), int(index)) for layer, index in keys]
        return [k for k in keys if 0 <= k[0] < pooled.layers and 0 <= k[1] < pooled.neurons]

    refined, coarse = inside(refined), inside(coarse)
    n_rows, n_columns = pooled.grid.shape
    width = max(2, min(16, WIDTH // max(n_columns, 1)))
    height = max(4, min(16, HEIGHT // max(n_rows, 1)))
    margin = 44  # the layer labels
    peak = float(pooled.grid.max()) if pooled.grid.numel() else 0.0
    levels = torch.zeros_like(pooled.grid, dtype=torch.long) if peak <= 0 else \
        torch.round(pooled.grid / peak * LEVELS).to(torch.long)
    paths: dict[int, list[str]] = {}
    for r, row in enumerate(levels.tolist()):
        c = 0
        while c < n_columns:
            level, start = row[c], c
            while c < n_columns and row[c] == level:
                c += 1
            if level > 0:
                paths.setdefault(level, []).append(f"M{margin + start * width} {r * height}h{(c - start) * width}"
                                                   f"v{height}h-{(c - start) * width}z")
    shapes = [f'<path fill="{_shade(level)}" d="{"".join(parts)}"/>' for level, parts in sorted(paths.items())]
    marked = {pooled.cell(layer, index): f"L{layer}.N{index}" for layer, index in refined}
    dotted: dict[tuple[int, int], list[str]] = {}
    for layer, index in coarse:
        cell = pooled.cell(layer, index)
        if cell not in marked:
            dotted.setdefault(cell, []).append(f"L{layer}.N{index}")
    for (r, c), names in sorted(dotted.items()):
        shapes.append(f'<circle cx="{margin + c * width + width / 2:g}" cy="{r * height + height / 2:g}" '
                      f'r="{max(1.0, min(width, height) / 3):g}" fill="{COARSE_COLOUR}"><title>'
                      f'{escape(", ".join(sorted(set(names))))} (coarse)</title></circle>')
    for (r, c), name in sorted(marked.items()):
        shapes.append(f'<rect x="{margin + c * width}" y="{r * height}" width="{width}" height="{height}" '
                      f'fill="none" stroke="{REFINED_COLOUR}" stroke-width="1.5"><title>{escape(name)} (refined)'
                      "</title></rect>")
    step = max(1, math.ceil(12 / height))  # a label at least every 12 px
    labels = [f'<text x="{margin - 4}" y="{r * height + height / 2:g}" text-anchor="end" dominant-baseline="middle">'
              f"{_span(r * pooled.rows, min((r + 1) * pooled.rows, pooled.layers) - 1, 'L')}</text>"
              for r in range(0, n_rows, step)]
    total_w, total_h = margin + n_columns * width, n_rows * height
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
           f'viewBox="0 0 {total_w} {total_h}" role="img" style="display:block;margin:4px 0">'
           f"<title>{escape(title or 'neuron scores')}</title>"
           f'<rect x="{margin}" y="0" width="{n_columns * width}" height="{total_h}" fill="#fff" stroke="#ccc"/>'
           + "".join(shapes)
           + f'<g font-size="10" fill="#555">{"".join(labels)}</g></svg>')
    blocks = (f"each cell: the largest |score| of {pooled.columns} neurons" if pooled.columns > 1
              else "each cell: one neuron's |score|")
    if pooled.rows > 1:
        blocks += f" over {pooled.rows} layers"
    legend = [f"{pooled.layers} layers × {pooled.neurons} neurons", blocks,
              f"darkest = {number(peak)}" if peak > 0 else "every score is 0"]
    if marked:
        legend.append("black outline: refined neurons")
    if dotted:
        legend.append("blue dot: coarse neurons")
    if pooled.non_finite:
        legend.append(f"{pooled.non_finite} non-finite scores drawn as 0")
    return svg + f'<div style="color:#555;font-size:11px">{escape("; ".join(legend))}</div>'
