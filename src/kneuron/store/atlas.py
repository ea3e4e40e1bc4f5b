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
        """Jupyter's display: a summary of the atlas (:mod:`kneuron.store.atlas_display`; a few aggregate reads)."""
        from kneuron.store.atlas_display import atlas_html

        return atlas_html(self)
