"""The atlas's study results: each study's long-format rows (``results``), replaced whole in one transaction, and
the record of which done facts they covered (meta ``coverage``), which tells a report current results from stale.

A mixin of :class:`kneuron.store.Atlas` (see :mod:`kneuron.store.schema` for the table).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from kneuron.errors import InputError
from kneuron.store.connection import AtlasConnection
from kneuron.store.schema import AGGREGATE_COLUMNS, AGGREGATES, RESULTS_BY_FACT


def fact_digest(ids: Iterable[str]) -> str:
    """BLAKE2b-128 of the sorted, distinct fact ids (one per line): which facts a study covered."""
    return hashlib.blake2b("\n".join(sorted(set(ids))).encode(), digest_size=16).hexdigest()


class ResultsTable(AtlasConnection):
    """Reads and writes of the ``results`` table and of meta ``coverage``."""

    def write_results(self, study: str, rows: Iterable[Mapping[str, Any]], facts: Iterable[str] | None = None,
                      aggregates: Iterable[Mapping[str, Any]] | None = None) -> int:
        """Replace the rows of ``study`` with ``rows`` (dicts with variant, relation, fact_id, metric, value; a
        row's own "study" key, if any, must match) in one transaction. Returns how many were written.

        ``facts``: the ids of the facts the study covered; their count and :func:`fact_digest` are stored with the
        rows (meta ``coverage``), so that a report can tell results that cover every done fact from stale ones.
        ``aggregates``: the rows' means with their intervals (dicts of the ``aggregates`` table's columns, see
        :func:`kneuron.studies.intervals.aggregate_rows`), replaced in the same transaction (None: left as they
        are).

        Raises:
            InputError: no study name, a row of another study, or a malformed row (nothing is written).
        """
        if not study:
            raise InputError("Give the study's name to write its results under.")
        records = []
        for number, entry in enumerate(rows):
            if entry.get("study", study) != study:
                raise InputError(f"Result row {number} belongs to study {entry.get('study')!r}, not {study!r}.")
            try:
                value = entry["value"]
                value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
                records.append((study, str(entry["variant"]), str(entry.get("relation") or ""),
                                str(entry.get("fact_id") or ""), str(entry["metric"]), value))
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"Result row {number} of {study!r} is malformed ({exc!r}); each row needs "
                                 "variant, metric and a numeric value (relation and fact_id optional).") from None
        covered = None if facts is None else sorted(set(facts))
        try:
            summaries = None if aggregates is None else [
                (study, *(_sql_number(a[c]) if c in ("mean", "lo", "hi", "control_mean", "p") else a[c]
                          for c in AGGREGATE_COLUMNS)) for a in aggregates]
        except KeyError as exc:
            raise InputError(f"An aggregate of {study!r} lacks {exc}.") from None
        with self.transaction() as db:
            db.execute(RESULTS_BY_FACT)  # an atlas made before the index existed gets it at its next study
            db.execute("DELETE FROM results WHERE study = ?", (study,))
            db.executemany("INSERT INTO results (study, variant, relation, fact_id, metric, value) "
                           "VALUES (?, ?, ?, ?, ?, ?)", records)
            if summaries is not None:
                db.execute(AGGREGATES)
                db.execute("DELETE FROM aggregates WHERE study = ?", (study,))
                db.executemany(f"INSERT INTO aggregates (study, {', '.join(AGGREGATE_COLUMNS)}) VALUES "
                               f"({', '.join('?' * (len(AGGREGATE_COLUMNS) + 1))})", summaries)
            row = db.execute("SELECT value FROM meta WHERE key = 'coverage'").fetchone()
            coverage = self._json(row[0], "meta value 'coverage'") if row else {}
            coverage.pop(study, None)
            if covered is not None:
                coverage[study] = {"facts": len(covered), "digest": fact_digest(covered)}
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('coverage', ?)",
                       (json.dumps(coverage, sort_keys=True),))
        self._meta = None
        return len(records)

    def coverage(self) -> dict[str, dict[str, Any]]:
        """Per study, the facts its stored results covered: ``{"facts": count, "digest": fact_digest}`` (studies
        written without ``facts``, or before kneuron recorded it, are missing)."""
        return dict(self.meta.get("coverage", {}))

    def done_coverage(self) -> dict[str, Any]:
        """The done facts now, as :meth:`coverage` records them: ``{"facts": count, "digest": fact_digest}``."""
        ids = [row[0] for row in self._execute("SELECT id FROM facts WHERE status = 'done'")]
        return {"facts": len(ids), "digest": fact_digest(ids)}

    def results(self, study: str | None = None) -> list[dict[str, Any]]:
        """The rows of ``study`` (all studies when None) in the order written, NULL values as NaN."""
        sql = "SELECT study, variant, relation, fact_id, metric, value FROM results"
        rows = self._rows(sql + (" WHERE study = ? ORDER BY rowid" if study else " ORDER BY rowid"),
                          [study] if study else [])
        for row in rows:
            if row["value"] is None:
                row["value"] = math.nan
        return rows

    def aggregates(self, study: str | None = None) -> list[dict[str, Any]]:
        """The stored aggregates of ``study`` (all studies when None) in the order written, NULL as NaN; none for
        an atlas whose studies were run before kneuron stored them."""
        if not self._rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'aggregates'"):
            return []
        sql = f"SELECT study, {', '.join(AGGREGATE_COLUMNS)} FROM aggregates"
        rows = self._rows(sql + (" WHERE study = ? ORDER BY rowid" if study else " ORDER BY rowid"),
                          [study] if study else [])
        for row in rows:
            for key in ("mean", "lo", "hi", "control_mean", "p"):
                if row[key] is None:
                    row[key] = math.nan
        return rows

    def studies(self) -> list[str]:
        """The studies with rows in the atlas, by name."""
        return [row["study"] for row in self._rows("SELECT DISTINCT study FROM results ORDER BY study")]


def _sql_number(value: Any) -> float | None:
    """A float, NaN (and None) as NULL."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
