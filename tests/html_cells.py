"""An HTML page's table cells and the elements it opens, for the tests of the rich displays."""

from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser


class Cells(HTMLParser):
    """Every table's rows, as lists of cell texts, and how many of each element the text opens (``tags``)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: Counter[str] = Counter()
        self._cell: list[str] | None = None
        self.feed(text)

    @property
    def scripts(self) -> int:
        """How many <script> elements the text opens."""
        return self.tags["script"]

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
