"""The atlas: everything a run found, in one SQLite file (standard-library ``sqlite3``, WAL mode).

A run (:func:`kneuron.store.run`) writes one fact per transaction, so a killed run loses at most the fact it was
computing, and readers (studies, report, ``kneuron atlas``) may open the file while it grows.

Example:
    >>> atlas = Atlas.open("runs/demo.sqlite", read_only=True)
    >>> atlas.meta["params"]["steps"], len(atlas.facts())
    (20, 48)
    >>> kn = atlas.knowledge_neurons("capital:France")
    >>> atlas.relation_neurons("capital").most_common(3)
    >>> atlas.write_results("suppress_amplify", rows)      # replaces that study's rows in one transaction

:class:`Atlas` is assembled from one module per responsibility, each usable on its own:

- :mod:`kneuron.store.schema`: the tables and meta keys (the format, version 1, documented there), the version and
  identity checks;
- :mod:`kneuron.store.files`: how an atlas file is recognised, created and deleted, and SQLite's errors in words;
- :mod:`kneuron.store.connection`: opening, the run lock, write transactions, snapshot reads;
- :mod:`kneuron.store.facts_table`, :mod:`kneuron.store.neurons_table`, :mod:`kneuron.store.results_table`: the
  reads and writes of facts and prompts, of neurons and the generic table, and of the studies' results;
- :mod:`kneuron.store.queries`: the reads behind the web app's pages and the CLI's checks (the only SQL of kneuron
  is in :mod:`kneuron.store`; :meth:`Atlas.query` is for a user's own queries).

It re-exports :func:`kneuron.models.identity.model_identity`, what identifies a model in an atlas.
"""

from __future__ import annotations

import sqlite3

from kneuron.display import box, escape, line, table, warning
from kneuron.errors import KneuronError
from kneuron.models.identity import model_identity
from kneuron.store.connection import BUSY_TIMEOUT
from kneuron.store.facts_table import FactsTable
from kneuron.store.files import NEW_ATLAS_HINT, translate
from kneuron.store.neurons_table import NeuronsTable
from kneuron.store.results_table import ResultsTable, fact_digest
from kneuron.store.schema import (
    IDENTITY_KEYS,
    KINDS,
    PARAM_DEFAULTS,
    PARAM_KEYS,
    RESULTS_BY_FACT,
    SCHEMA,
    SCHEMA_VERSION,
    STATUSES,
    param,
)
from kneuron.store.scores import blob_dtype, from_blob, to_blob

__all__ = ["BUSY_TIMEOUT", "IDENTITY_KEYS", "KINDS", "NEW_ATLAS_HINT", "PARAM_DEFAULTS", "PARAM_KEYS",
           "RESULTS_BY_FACT", "SCHEMA", "SCHEMA_VERSION", "STATUSES", "Atlas", "blob_dtype", "fact_digest",
           "from_blob", "model_identity", "param", "to_blob", "translate"]


# ------------------------------------------------------------------------------------------------ the atlas


class Atlas(ResultsTable, NeuronsTable, FactsTable):
    """One run's results in an SQLite file; see :mod:`kneuron.store.schema` for the tables.

    Open an existing atlas with :meth:`open`; :func:`kneuron.store.run` creates them. Use as a context manager
    (or call :meth:`close`). Read inside :meth:`snapshot` to see one moment of an atlas a run may be writing.

    Its methods come from :class:`~kneuron.store.connection.AtlasConnection` (opening, transactions, snapshots,
    :meth:`query`), :class:`~kneuron.store.facts_table.FactsTable` (facts, prompts and their scores),
    :class:`~kneuron.store.neurons_table.NeuronsTable` (neurons, counts, the generic table) and
    :class:`~kneuron.store.results_table.ResultsTable` (the studies' rows and what they covered).
    """

    def _repr_html_(self) -> str:
        """Jupyter's display: a summary of the atlas (:func:`atlas_html`; a few aggregate reads)."""
        return atlas_html(self)


# ------------------------------------------------------------------------------------------------ display

#: how many of the most shared neurons the summary lists
TOP = 5
STATUS_COLUMNS = ("done", "pending", "dropped", "invalid")


def atlas_html(atlas: Atlas) -> str:
    """The HTML display of ``atlas`` (``Atlas._repr_html_``), built from the pieces of :mod:`kneuron.display`.

    It shows the model and the estimator, the facts per relation and status, the knowledge neurons per layer, the
    neurons shared by the most facts, the generic neurons' count and the studies stored: a handful of aggregate
    queries in one snapshot (no model, no score blobs), so it stays cheap on a big atlas. An atlas that cannot be
    read (closed, locked, damaged) shows one line saying why instead of raising.
    """
    from kneuron.studies.intervals import count_interval, format_interval

    title = f"Atlas {atlas.path}"
    try:
        with atlas.snapshot():
            meta = atlas.meta
            statuses = atlas.status_counts()
            layers = atlas.layer_counts()
            top = atlas.top_neuron_intervals(TOP)
            per_fact_counts = [c for counts in atlas.done_fact_neuron_counts().values() for c in counts]
            generic = len(atlas.generic_neurons())
            studies = atlas.studies()
    except (KneuronError, sqlite3.Error) as exc:
        return box(title, warning(f"cannot read the atlas: {str(exc).splitlines()[0] if str(exc) else exc!r}"))
    params = meta.get("params", {}) or {}
    estimator = params.get("estimator", "ig")
    how = f"estimator {escape(estimator)}" + (f", {escape(params['steps'])} steps" if estimator == "ig"
                                               and "steps" in params else "")
    model = [escape(meta.get(key, "?")) for key in ("model", "family", "kind", "n_layers", "n_neurons")]
    parts = [line(f"{model[0]} ({model[1]}, {model[2]}, {model[3]} layers × {model[4]} neurons)", how,
                  f"kneuron {escape(meta.get('kneuron_version', '?'))}")]
    totals = dict.fromkeys(STATUS_COLUMNS, 0)
    rows = []
    for relation, counts in statuses.items():
        for status in STATUS_COLUMNS:
            totals[status] += counts.get(status, 0)
        rows.append([escape(relation)] + [str(counts.get(status, 0)) for status in STATUS_COLUMNS])
    rows.append(["<b>all</b>"] + [f"<b>{totals[status]}</b>" for status in STATUS_COLUMNS])
    parts.append(table(["relation", *STATUS_COLUMNS], rows))
    neurons = sum(layers.values())
    per_fact = escape(format_interval(count_interval(per_fact_counts)))
    parts.append(line(f"<b>{neurons}</b> knowledge neurons over {totals['done']} done facts (per fact: {per_fact})",
                      f"{generic} generic neurons", "studies stored: " + (", ".join(map(escape, studies)) or "none")))
    if neurons:
        parts.append(table(["layer", "neurons", "share"],
                           [[f"L{layer}", str(n), f"{n / neurons:.0%}"] for layer, n in layers.items() if n]))
        parts.append(table(["neuron", "facts", "mean score [95%], n"],
                           [[escape(n), str(facts), escape(format_interval(score, significant=4))]
                            for n, facts, score in top]))
    return box(title, *parts)
