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

This module also keeps :func:`model_identity`, what identifies a model in an atlas.
"""

from __future__ import annotations

import json
from typing import Any

import torch

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


# ------------------------------------------------------------------------------------------------ model identity


def model_identity(lm) -> dict[str, Any]:
    """What identifies a model in an atlas: family, kind, shape, dtype and a fingerprint of its weights.

    The fingerprint is a BLAKE2b digest of every parameter and buffer (name, shape, dtype and all its bytes)
    and of the tokenizer's vocabulary, so a model edited in a single value slot is another model. Hashing
    SmolLM2-135M's 0.5 GB of float32 weights took 1.1 s on a busy 2-core machine.
    """
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in lm.model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if data.numel():
            digest.update(data.view(torch.uint8).numpy().data)
    vocab = lm.tokenizer.get_vocab() if hasattr(lm.tokenizer, "get_vocab") else {}
    digest.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return {"model": lm.name, "family": lm.spec.family, "kind": lm.kind, "n_layers": lm.n_layers,
            "n_neurons": lm.n_neurons, "dtype": str(lm.dtype).removeprefix("torch."),
            "fingerprint": digest.hexdigest()}


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
