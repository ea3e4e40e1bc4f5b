"""The small HTML pieces every report section is built from: escaped text, a number or a dash, a table, an
embedded PNG. One copy, so the sections look alike and a fix reaches all of them."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from kneuron.studies.base import number  # noqa: F401  (the same cells as the terminal summaries)


def escape(text: object) -> str:
    """``text`` as HTML-escaped text."""
    return html.escape(str(text))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned (class ``l``). Cells are given as HTML."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(png: bytes | None, alt: str) -> str:
    """A PNG embedded as a data URL (nothing when there is none)."""
    if not png:
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
