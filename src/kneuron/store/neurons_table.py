"""The atlas's neurons and its generic table: each fact's refined, coarse and activation-baseline neurons, the
counts over facts, relations and layers that the report and ``kneuron atlas`` show, and the generic table a run
(or :meth:`NeuronsTable.update_generic`) rewrites from them.

A mixin of :class:`kneuron.store.Atlas` (see :mod:`kneuron.store.schema` for the tables).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from kneuron.attribution.types import KnowledgeNeurons, Neuron
from kneuron.store.facts_table import FactsTable
from kneuron.store.files import damaged


class NeuronsTable(FactsTable):
    """Reads of the ``neurons`` table, and reads and writes of the ``generic`` table."""

    def _neurons(self, fact_id: str, kind: str) -> list[tuple[int, Neuron]]:
        rows = self._execute("SELECT prompt, layer, neuron, score FROM neurons WHERE fact_id = ? AND kind = ? "
                             "ORDER BY prompt, rank", (fact_id, kind))
        return [(prompt, Neuron(layer, neuron, score)) for prompt, layer, neuron, score in rows]

    def knowledge_neurons(self, fact_id: str) -> KnowledgeNeurons:
        """The fact's refined neurons (best first), its coarse neurons per prompt and its parameters.

        Raises:
            AtlasError: no such fact, or a fact that is not done.
        """
        row = self._done_row(fact_id)
        n_prompts = len(self._json(row["templates"], f"the templates of {fact_id!r}"))
        coarse: list[list[Neuron]] = [[] for _ in range(n_prompts)]
        for prompt, neuron in self._neurons(fact_id, "coarse"):
            if not 0 <= prompt < n_prompts:
                raise damaged(self.path, f"a coarse neuron of {fact_id!r} belongs to prompt {prompt}, but the fact "
                                         f"has {n_prompts} prompts")
            coarse[prompt].append(neuron)
        refined = [neuron for _, neuron in self._neurons(fact_id, "refined")]
        return KnowledgeNeurons(refined, coarse, self._to_fact(row),
                                self._json(row["params"] or "{}", f"the params of {fact_id!r}"))

    def baseline_neurons(self, fact_id: str) -> list[Neuron]:
        """The activation-baseline neurons of the fact (largest mean activation, as many as refined)."""
        self._done_row(fact_id)
        return [neuron for _, neuron in self._neurons(fact_id, "baseline")]

    def all_refined(self) -> dict[str, list[Neuron]]:
        """Every done fact's refined neurons (an empty list for a fact without any), in run order."""
        found: dict[str, list[Neuron]] = {row["id"]: [] for row in self._rows(
            "SELECT id FROM facts WHERE status = 'done' ORDER BY seq")}
        for fact_id, layer, neuron, score in self._execute(
                "SELECT fact_id, layer, neuron, score FROM neurons WHERE kind = 'refined' ORDER BY fact_id, rank"):
            if fact_id in found:
                found[fact_id].append(Neuron(layer, neuron, score))
        return found

    def relation_neurons(self, relation: str) -> Counter[tuple[int, int]]:
        """How many of the relation's done facts have each refined neuron, keyed by ``(layer, index)``."""
        rows = self._execute(
            "SELECT n.layer, n.neuron, count(DISTINCT n.fact_id) FROM facts f CROSS JOIN neurons n ON n.fact_id = f.id "
            "WHERE n.kind = 'refined' AND f.status = 'done' AND f.relation = ? GROUP BY n.layer, n.neuron",
            (relation,))
        return Counter({(layer, neuron): count for layer, neuron, count in rows})

    def layer_counts(self, kind: str = "refined", relation: str | None = None) -> dict[int, int]:
        """How many neurons of ``kind`` (over done facts, with repeats) sit in each layer (every layer listed)."""
        # one relation: its facts first (by relation), then their neurons (by fact); else every neuron of the kind
        join = "facts f CROSS JOIN neurons n ON n.fact_id = f.id" if relation is not None else \
            "neurons n JOIN facts f ON f.id = n.fact_id"
        sql = f"SELECT n.layer, count(*) FROM {join} WHERE n.kind = ? AND f.status = 'done'"
        args: list[Any] = [kind]
        if relation is not None:
            sql += " AND f.relation = ?"
            args.append(relation)
        counts = dict.fromkeys(range(int(self.meta.get("n_layers", 0))), 0)
        for layer, count in self._execute(sql + " GROUP BY n.layer", args):
            counts[layer] = count
        return counts

    def top_neurons(self, k: int = 10, relation: str | None = None) -> list[tuple[Neuron, int]]:
        """The ``k`` refined neurons shared by the most done facts: ``(neuron with mean score, facts)``."""
        join = "facts f CROSS JOIN neurons n ON n.fact_id = f.id" if relation is not None else \
            "neurons n JOIN facts f ON f.id = n.fact_id"  # as in layer_counts
        sql = (f"SELECT n.layer, n.neuron, count(DISTINCT n.fact_id) AS facts, avg(n.score), "
               f"sum(typeof(n.score) NOT IN ('integer', 'real')) AS not_numbers FROM {join} "
               "WHERE n.kind = 'refined' AND f.status = 'done'")
        args: list[Any] = []
        if relation is not None:
            sql += " AND f.relation = ?"
            args.append(relation)
        sql += " GROUP BY n.layer, n.neuron ORDER BY facts DESC, avg(n.score) DESC, n.layer, n.neuron LIMIT ?"
        rows = self._execute(sql, [*args, k])
        self._numbers_only(rows, "score")
        return [(Neuron(layer, neuron, score), facts) for layer, neuron, facts, score, _ in rows]

    def done_fact_neuron_counts(self) -> dict[str, list[int]]:
        """Per relation, the number of refined neurons of each of its done facts (in run order)."""
        rows = self._rows(
            "SELECT f.relation AS relation, (SELECT count(*) FROM neurons n WHERE n.fact_id = f.id AND "
            "n.kind = 'refined') AS neurons FROM facts f WHERE f.status = 'done' ORDER BY f.seq")
        out: dict[str, list[int]] = {}
        for row in rows:
            out.setdefault(row["relation"], []).append(int(row["neurons"]))
        return out

    def top_neuron_intervals(self, k: int = 10, relation: str | None = None) -> list[tuple[Neuron, int, Any]]:
        """:meth:`top_neurons` with each neuron's mean score as an :class:`~kneuron.studies.intervals.Interval`
        over the done facts it is a refined neuron of (its score per fact; a seeded bootstrap over those facts):
        ``(neuron, facts, interval)``. Computed from the neurons, which no study stores (one more query)."""
        from kneuron.studies.intervals import mean_interval

        top = self.top_neurons(k, relation)
        if not top:
            return []
        join = "facts f CROSS JOIN neurons n ON n.fact_id = f.id" if relation is not None else \
            "neurons n JOIN facts f ON f.id = n.fact_id"  # as in layer_counts
        keys = [(n.layer, n.index) for n, _ in top]
        sql = (f"SELECT n.layer, n.neuron, avg(n.score) FROM {join} WHERE n.kind = 'refined' AND f.status = 'done' "
               f"AND (n.layer, n.neuron) IN (VALUES {', '.join(['(?, ?)'] * len(keys))})")
        args: list[Any] = [value for key in keys for value in key]
        if relation is not None:
            sql += " AND f.relation = ?"
            args.append(relation)
        scores: dict[tuple[int, int], list[float]] = {key: [] for key in keys}
        sql += " GROUP BY n.layer, n.neuron, n.fact_id ORDER BY min(f.seq)"  # the facts in run order, as elsewhere
        for layer, neuron, score in self._execute(sql, args):
            scores[(layer, neuron)].append(score)  # top_neurons refused a score that is no number
        return [(neuron, facts, mean_interval(scores[(neuron.layer, neuron.index)])) for neuron, facts in top]

    # -------------------------------------------------------------------------------------------- generic

    def generic_neurons(self, flagged_only: bool = True) -> list:
        """The generic table as :class:`~kneuron.studies.generic.GenericNeuron` values, most shared first."""
        from kneuron.studies.generic import GenericNeuron

        sql = "SELECT layer, neuron, facts, share FROM generic"
        if flagged_only:
            sql += " WHERE flagged = 1"
        rows = self._execute(sql + " ORDER BY facts DESC, layer, neuron")
        return [GenericNeuron(layer, neuron, facts, share) for layer, neuron, facts, share in rows]

    def update_generic(self, share: float | None = None, min_facts: int | None = None) -> list:
        """Recompute the generic table from the done facts' refined neurons (one transaction) and return the
        flagged neurons; ``share`` and ``min_facts`` default to the atlas's (10%, 2) and are saved in meta."""
        from kneuron.studies.generic import generic_neurons

        settings = dict(self.meta.get("generic", {"share": 0.1, "min_facts": 2}))
        if share is not None:
            settings["share"] = float(share)
        if min_facts is not None:
            settings["min_facts"] = int(min_facts)
        with self.transaction() as db:  # read the facts in the transaction that writes the table
            refined = self.all_refined()
            settings["facts"] = len(refined)
            flagged = {g.key for g in generic_neurons(refined, settings["share"], settings["min_facts"])} \
                if refined else set()
            counts = Counter(n.key for neurons in refined.values() for n in {m.key: m for m in neurons}.values())
            total = len(refined)
            rows = [(layer, neuron, count, count / total, int((layer, neuron) in flagged))
                    for (layer, neuron), count in sorted(counts.items()) if count >= settings["min_facts"]]
            db.execute("DELETE FROM generic")
            db.executemany("INSERT INTO generic (layer, neuron, facts, share, flagged) VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generic', ?)", (json.dumps(settings),))
        self._meta = None
        return self.generic_neurons()
