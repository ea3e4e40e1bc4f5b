"""The atlas's facts and prompts: registering a run's facts, writing a computed fact (its prompts and neurons in
one transaction), and reading facts, their status and their prompts' stored scores back.

A mixin of :class:`kneuron.store.Atlas` (see :mod:`kneuron.store.schema` for the tables).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kneuron.attribution.estimator_base import has_completeness
from kneuron.attribution.types import KnowledgeNeurons, Neuron, NeuronScores
from kneuron.errors import AtlasError, FactError, InputError
from kneuron.facts.fact import Fact
from kneuron.store import scores as score_blobs
from kneuron.store.connection import AtlasConnection
from kneuron.store.files import damaged, quoted
from kneuron.store.schema import STATUSES, param
from kneuron.store.scores import blob_dtype, from_blob, to_blob


def _gap_or_nan(scores: NeuronScores) -> torch.Tensor:
    """The completeness gap to store: an estimator without one (None) is stored as NaN in every layer, as atlases
    always kept it (the column is NOT NULL)."""
    if scores.completeness_gap is not None:
        return scores.completeness_gap
    return torch.full((scores.n_layers,), math.nan, dtype=torch.float64)


class FactsTable(AtlasConnection):
    """Reads and writes of the ``facts`` and ``prompts`` tables."""

    # -------------------------------------------------------------------------------------------- reading

    def fact_rows(self, status: str | Iterable[str] | None = None, relation: str | None = None,
                  ) -> list[dict[str, Any]]:
        """The facts table's rows (with status, known-filter outcome and timing), in run order.

        Raises:
            InputError: a status that is not one of pending, done, dropped, invalid.
        """
        where, args = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in statuses if s not in STATUSES]
            if unknown:
                raise InputError(f"Unknown fact status {unknown[0]!r}; use one of {', '.join(STATUSES)}.")
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args += statuses
        if relation is not None:
            where.append("relation = ?")
            args.append(relation)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._rows(f"SELECT * FROM facts{clause} ORDER BY seq", args)

    def facts(self, status: str | Iterable[str] | None = "done", relation: str | None = None) -> list[Fact]:
        """The facts with ``status`` ("done" by default; None for all), in run order."""
        return [self._to_fact(row) for row in self.fact_rows(status, relation)]

    def _to_fact(self, row: Mapping[str, Any]) -> Fact:
        templates = self._json(row["templates"], f"the templates of {row['id']!r}")
        try:
            return Fact(row["subject"], row["relation"], row["object"], tuple(templates), row["id"])
        except (TypeError, ValueError, FactError) as exc:
            raise damaged(self.path, f"fact {row['id']!r} cannot be read back: {exc}") from None

    def fact(self, fact_id: str) -> Fact:
        """The fact ``fact_id`` (any status).

        Raises:
            AtlasError: the atlas has no such fact.
        """
        return self._to_fact(self._fact_row(fact_id))

    def fact_row(self, fact_id: str) -> dict[str, Any] | None:
        """The facts table's row of ``fact_id`` (every column, as stored: templates and params are JSON text), or
        None when the atlas has no such fact."""
        rows = self._rows("SELECT * FROM facts WHERE id = ?", [fact_id])
        return rows[0] if rows else None

    def has_done_facts(self) -> bool:
        """Whether any fact is done (has its neurons): a study or report has something to read."""
        return bool(self._execute("SELECT 1 FROM facts WHERE status = 'done' LIMIT 1"))

    def _fact_row(self, fact_id: str) -> dict[str, Any]:
        row = self.fact_row(fact_id)
        if row is None:
            raise AtlasError(f"No fact {fact_id!r} in {quoted(self.path)}; `kneuron atlas --run {self.path}` "
                             "lists its facts.")
        return row

    def _done_row(self, fact_id: str) -> dict[str, Any]:
        row = self._fact_row(fact_id)
        if row["status"] != "done":
            raise AtlasError(f"Fact {fact_id!r} is {row['status']} in {quoted(self.path)}, not done: it has no "
                             "neurons" + (" yet (resume the run)." if row["status"] == "pending" else "."))
        return row

    def relations(self) -> list[str]:
        """The relations of the atlas's facts, in run order."""
        rows = self._rows("SELECT relation, min(seq) AS first FROM facts GROUP BY relation ORDER BY first")
        return [row["relation"] for row in rows]

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Per relation (in run order), how many facts have each status."""
        counts: dict[str, dict[str, int]] = {relation: dict.fromkeys(STATUSES, 0) for relation in self.relations()}
        for row in self._rows("SELECT relation, status, count(*) AS n FROM facts GROUP BY relation, status"):
            counts[row["relation"]][row["status"]] = row["n"]
        return counts

    def prompt_scores(self, fact_id: str) -> list[NeuronScores]:
        """The scores of each prompt of the fact (of the atlas's estimator: ``estimator`` says which), as the run
        computed them."""
        self._done_row(fact_id)
        params = self.params
        rows = self._rows("SELECT * FROM prompts WHERE fact_id = ? ORDER BY idx", [fact_id])
        answer = self._fact_row(fact_id)["object"]
        found = []
        for row in rows:
            shape = (row["layers"], row["neurons"])
            keep = params.get("keep_scores", "full")
            try:
                self._check_blobs(row, shape, keep)
            except ValueError as exc:
                raise damaged(self.path, f"prompt {row['idx']} of {fact_id!r}: {exc}") from None
            scores, activations = score_blobs.decode_dense(row["scores"], row["activations"], row["dtype"], shape,
                                                           keep)
            estimator = param(params, "estimator")
            found.append(NeuronScores(
                scores=scores,
                activations=activations,
                probability=row["objective"],
                baseline=from_blob(row["baseline"], "float64", (row["layers"],)),
                completeness_gap=(from_blob(row["completeness_gap"], "float64", (row["layers"],))
                                  if has_completeness(estimator) else None),  # stored as NaN (the column is NOT NULL)
                prompt=row["text"], answer=answer, position=row["position"],
                steps=params.get("steps", 20 if estimator == "ig" else 1),  # an estimator without steps takes α = 1
                objective=params.get("objective", "prob"), alphas=params.get("alphas", "right"), estimator=estimator,
                norm=params.get("norm"),
            ))
        return found

    def prompt_sparse(self, fact_id: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per prompt of a fact in a ``keep_scores="sparse"`` atlas: its kept (flat indices, scores, activations);
        a flat index is ``layer * neurons + neuron``.

        Raises:
            AtlasError: the fact is not done, or the atlas keeps full or no scores.
        """
        self._done_row(fact_id)
        if self.params.get("keep_scores", "full") != "sparse":
            raise AtlasError(f"{quoted(self.path)} keeps {self.params.get('keep_scores', 'full')} scores, not "
                             "sparse ones: read them with prompt_scores().")
        rows = self._rows("SELECT * FROM prompts WHERE fact_id = ? ORDER BY idx", [fact_id])
        for row in rows:
            try:
                self._check_blobs(row, (row["layers"], row["neurons"]), "sparse")
            except ValueError as exc:
                raise damaged(self.path, f"prompt {row['idx']} of {fact_id!r}: {exc}") from None
        return [score_blobs.decode_sparse(row["scores"], row["activations"], row["dtype"]) for row in rows]

    _check_blobs = staticmethod(score_blobs.check_blobs)

    def prompt_rows(self, fact_id: str | None = None) -> list[dict[str, Any]]:
        """The prompts table without its BLOBs (probability, rank, text...), for one fact or all."""
        columns = "fact_id, idx, template, text, probability, rank, objective, position"
        if fact_id is None:
            return self._rows(f"SELECT {columns} FROM prompts ORDER BY fact_id, idx")
        return self._rows(f"SELECT {columns} FROM prompts WHERE fact_id = ? ORDER BY idx", [fact_id])

    # -------------------------------------------------------------------------------------------- writing

    def register_facts(self, entries: Sequence[tuple[Fact, Mapping[str, Any]]]) -> None:
        """Add facts with their known-filter outcome (``status``, ``known``, ``known_share``, ``ranks``, ``note``)
        in one transaction, after the facts already there."""
        if not entries:
            return
        with self.transaction() as db:
            start = db.execute("SELECT coalesce(max(seq), -1) + 1 FROM facts").fetchone()[0]
            db.executemany(
                "INSERT INTO facts (id, seq, relation, subject, object, templates, status, known, known_share, "
                "ranks, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(fact.id, start + i, fact.relation, fact.subject, fact.object, json.dumps(list(fact.templates)),
                  outcome["status"], outcome.get("known"), outcome.get("known_share"),
                  None if outcome.get("ranks") is None else json.dumps(outcome["ranks"]), outcome.get("note"))
                 for i, (fact, outcome) in enumerate(entries)])

    def store_fact(self, fact_id: str, kn: KnowledgeNeurons, probabilities: Sequence[tuple[float, int]],
                   baseline: Sequence[Neuron], compute_seconds: float | None = None) -> float:
        """Write one computed fact in one transaction: its prompts (``kn.scores``, with each prompt's
        (probability, rank)), refined, coarse and baseline neurons, parameters, and status 'done'.
        Returns the seconds spent encoding and writing (before the commit)."""
        start = time.perf_counter()
        prompt_rows = []
        templates = self._json(self._fact_row(fact_id)["templates"], f"the templates of {fact_id!r}")
        keep = self.params.get("keep_scores", "full")
        index = score_blobs.sparse_index([s.scores for s in kn.scores]) if keep == "sparse" else None
        for idx, (scores, (probability, rank)) in enumerate(zip(kn.scores, probabilities, strict=True)):
            dtype = blob_dtype(scores.scores)
            layers, width = scores.scores.shape
            prompt_rows.append((
                fact_id, idx, templates[idx] if idx < len(templates) else "", scores.prompt, float(probability),
                int(rank), float(scores.probability), int(scores.position), dtype, int(layers), int(width),
                *score_blobs.encode(scores.scores, scores.activations, dtype, keep, index),
                to_blob(scores.baseline, "float64"), to_blob(_gap_or_nan(scores), "float64")))
        neuron_rows = [(fact_id, "refined", -1, r, n.layer, n.index, float(n.score)) for r, n in enumerate(kn.neurons)]
        neuron_rows += [(fact_id, "coarse", p, r, n.layer, n.index, float(n.score))
                        for p, coarse in enumerate(kn.coarse) for r, n in enumerate(coarse)]
        neuron_rows += [(fact_id, "baseline", -1, r, n.layer, n.index, float(n.score)) for r, n in enumerate(baseline)]
        params = {k: v for k, v in kn.params.items() if isinstance(v, (str, int, float, bool)) or v is None}
        with self.transaction() as db:
            db.execute("DELETE FROM prompts WHERE fact_id = ?", (fact_id,))
            db.execute("DELETE FROM neurons WHERE fact_id = ?", (fact_id,))
            db.executemany("INSERT INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", prompt_rows)
            db.executemany("INSERT INTO neurons (fact_id, kind, prompt, rank, layer, neuron, score) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", neuron_rows)
            seconds = time.perf_counter() - start
            db.execute("UPDATE facts SET status = 'done', params = ?, compute_seconds = ?, write_seconds = ? "
                       "WHERE id = ?", (json.dumps(params, sort_keys=True), compute_seconds, seconds, fact_id))
        return seconds
