"""The atlas's format: its tables (:data:`SCHEMA`), the version this kneuron reads, the meta rows a new atlas
starts with, and the checks that an opened atlas is of this version and (for a run) of the run's model and
parameters. The format is what every atlas on disk is: a change here is a new schema version, not a refactoring.

Below, :class:`Atlas` is :class:`kneuron.store.Atlas`; :func:`model_identity` and :func:`fact_digest` are in
:mod:`kneuron.store.atlas`.

Schema (version 1)
------------------
``meta(key TEXT PRIMARY KEY, value TEXT)``: one row per key, the value JSON-encoded.
    ``schema_version`` (1), ``model`` (the name it was loaded by), ``family``, ``kind`` ("causal" or "mlm"),
    ``n_layers``, ``n_neurons``, ``dtype``, ``fingerprint`` (BLAKE2b of every parameter's bytes, names, shapes
    and dtypes and of the tokenizer's vocabulary: see :func:`model_identity`), ``kneuron_version``,
    ``torch_version``, ``transformers_version`` (provenance only, not checked),
    ``created`` (UTC, ISO 8601) and ``params``: ``{"steps", "threshold", "share", "objective", "alphas",
    "known_only", "top", "min_share", "chunk_facts", "keep_scores", "estimator"}`` (+ ``"sparse_threshold"`` when
    ``keep_scores`` is "sparse"; ``"estimator"`` and the estimator's own params, see
    :mod:`kneuron.attribution.estimators`: "ig" has ``steps``, ``alphas`` and ``objective``, "gxa" ``objective``
    only; a screened run adds ``"screen"`` (K layers) and ``"screen_estimator"``; a model that normalises its FFN
    outputs (Gemma 2/3, OLMo 2) adds ``"norm"``, "frozen" or "live" (:mod:`kneuron.attribution.ffn_norm`: an atlas
    of such a model without it was made with the live rule, before the rule existed); an atlas made before estimators
    lacks these keys and means exact integrated gradients, :data:`PARAM_DEFAULTS`; the known-filter settings
    are ``known_only``, ``top`` and ``min_share``, see :func:`kneuron.facts.known_facts`; chunks:
    :mod:`kneuron.store.chunks`). The model identity and
    ``params`` are the atlas's identity: a run with another model or other parameters refuses to write into
    it. ``generic``:
    ``{"share", "min_facts", "facts"}``: the settings of the ``generic`` table and how many done facts it
    counted. ``coverage``: ``{study: {"facts", "digest"}}``, the done facts each study's stored results covered
    (count and :func:`fact_digest` of their ids; see :meth:`Atlas.write_results`).

File identity: ``PRAGMA application_id`` is ``0x6B6E726E`` ("knrn"); see :mod:`kneuron.store.files` for how an
atlas is recognised (also one written before kneuron set it), created and deleted.

Readers read inside :meth:`Atlas.snapshot` (one read transaction), so what they read is one moment of the atlas
even while a run writes it.

``facts``: one row per fact the run selected, in the order it computes them.
    ``id`` (TEXT PRIMARY KEY, e.g. ``capital:France``), ``seq`` (registration order), ``relation``,
    ``subject``, ``object``, ``templates`` (JSON list), ``status``: ``'pending'`` (selected, not computed yet),
    ``'done'``, ``'dropped'`` (the model does not know it; kept as a record) or ``'invalid'`` (its prompts cannot
    be encoded for this model; ``note`` says why). Known-filter outcome: ``known`` (0/1), ``known_share``
    (share of prompts whose first answer token ranks below ``top``), ``ranks`` (JSON list of those ranks, per
    prompt). ``params`` (JSON: the refine parameters of this fact, including ``share_used`` of the adaptive
    rule), ``compute_seconds`` and ``write_seconds`` (timing only, not results).

``prompts``: one row per prompt of a done fact, ``PRIMARY KEY (fact_id, idx)``.
    ``template``, ``text`` (what the model read), ``probability`` (joint probability of the answer, from
    :func:`kneuron.facts.answer_probability`), ``rank`` (of the first answer token, 0 = top-1), ``objective``
    (the attributed objective at alpha = 1: the probability, or the log-probability with ``objective="logprob"``),
    ``position`` (attributed token position), ``dtype``, ``layers``, ``neurons`` and four BLOBs of raw
    little-endian numpy bytes: ``scores`` and ``activations`` (``layers x neurons``, row-major, in ``dtype``:
    ``float32``, or ``float64`` for float64 models; half-precision models are stored as float32, which is
    lossless) and ``baseline`` and ``completeness_gap`` (``layers`` values, float64). Float32 keeps the scores
    bit-exact, so anything recomputed from the atlas equals what the run selected. Float16 would not: on
    SmolLM2-135M 18-65% of a prompt's scores fall below float16's normal range (6.1e-5), and the coarse set
    recomputed from float16 scores differed for one prompt in three. The cost is ``8 x layers x neurons`` bytes
    per prompt, 369 KB for SmolLM2-135M (30 x 1536; zlib would save only 5%), with ``keep_scores="full"``;
    ``"sparse"`` (the default) and ``"none"`` store less in the same two columns (:mod:`kneuron.store.scores`).
    Read them back with :meth:`Atlas.prompt_scores` (dense) or :meth:`Atlas.prompt_sparse`; a full BLOB is
    ``numpy.frombuffer(blob, dtype).reshape(layers, neurons)``.

``neurons``: the selected neurons, ``PRIMARY KEY (fact_id, kind, prompt, rank)``.
    ``kind``: ``'refined'`` (the fact's knowledge neurons), ``'coarse'`` (per prompt) or ``'baseline'`` (the
    activation baseline: the neurons of largest mean activation, as many as refined); ``prompt`` (the prompt's
    ``idx`` for coarse neurons, -1 otherwise), ``rank`` (order in its list, 0 = best), ``layer``, ``neuron``
    (index within the layer), ``score`` (refined: mean score over the prompts; coarse: the prompt's score;
    baseline: mean activation).

``generic``: refined neurons shared by at least ``min_facts`` done facts, ``PRIMARY KEY (layer, neuron)``.
    ``facts`` (how many facts have it), ``share`` (of all done facts), ``flagged`` (1 when ``share`` exceeds the
    generic share, 10% by default: such a neuron cannot encode any one fact; see
    :mod:`kneuron.studies.generic`). A run rewrites it when it ends; :meth:`Atlas.update_generic` with
    another share rewrites it too.

``results``: the studies' long-format rows, ``(study, variant, relation, fact_id, metric, value)``.
    ``relation`` and ``fact_id`` are ``''`` for rows about no one relation or fact; a NaN ``value`` is stored
    as NULL and read back as NaN. :meth:`Atlas.write_results` replaces one study's rows atomically.

``aggregates`` (optional, written with a study's rows by :meth:`Atlas.write_results`): each per-fact measure's
    mean over the facts, overall (``relation = ''``) and per relation, with its n, 95% interval (``lo``, ``hi``;
    ``method``: ``bootstrap`` over facts or ``wilson`` for a share) and, against its ``control`` variant, the
    control's mean and the paired test's ``p`` (see :mod:`kneuron.studies.intervals`). NaN is stored as NULL.

``vocabulary`` (optional, created by ``kneuron study vocabulary``): each knowledge neuron's top promoted and
    suppressed tokens; see :mod:`kneuron.store.vocabulary`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kneuron.errors import AtlasError
from kneuron.store.files import NEW_ATLAS_HINT, quoted

__all__ = ["AGGREGATES", "AGGREGATE_COLUMNS", "IDENTITY_KEYS", "KINDS", "PARAM_DEFAULTS", "PARAM_KEYS",
           "RESULTS_BY_FACT", "SCHEMA", "SCHEMA_VERSION", "STATUSES", "check_identity",
           "check_version", "meta_rows", "param"]

SCHEMA_VERSION = 1
#: the meta keys and params that make an atlas's identity (a run must match them to write into it)
IDENTITY_KEYS = ("fingerprint", "family", "kind", "n_layers", "n_neurons", "dtype")
PARAM_KEYS = ("estimator", "steps", "threshold", "share", "objective", "alphas", "known_only", "top", "min_share",
              "chunk_facts", "keep_scores", "sparse_threshold", "screen", "screen_estimator", "norm")
#: what a param an atlas made before estimators existed lacks meant there: exact integrated gradients, no screen
PARAM_DEFAULTS = {"estimator": "ig", "screen": None, "screen_estimator": None}
STATUSES = ("pending", "done", "dropped", "invalid")
KINDS = ("refined", "coarse", "baseline")

#: lets a page read one fact's results without scanning every study's rows (``kneuron serve``)
RESULTS_BY_FACT = "CREATE INDEX IF NOT EXISTS results_by_fact ON results (fact_id, study)"
#: the aggregates table (optional: created with a study's first aggregates; an older atlas has none)
AGGREGATES = """CREATE TABLE IF NOT EXISTS aggregates (
    study TEXT NOT NULL, variant TEXT NOT NULL, relation TEXT NOT NULL DEFAULT '', metric TEXT NOT NULL,
    mean REAL, lo REAL, hi REAL, n INTEGER NOT NULL, method TEXT NOT NULL, control TEXT NOT NULL DEFAULT '',
    control_mean REAL, p REAL)"""
#: the columns of an aggregate, in the table's order after ``study``
AGGREGATE_COLUMNS = ("variant", "relation", "metric", "mean", "lo", "hi", "n", "method", "control", "control_mean",
                     "p")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS facts (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    relation TEXT NOT NULL,
    subject TEXT NOT NULL,
    object TEXT NOT NULL,
    templates TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'dropped', 'invalid')),
    known INTEGER,
    known_share REAL,
    ranks TEXT,
    note TEXT,
    params TEXT,
    compute_seconds REAL,
    write_seconds REAL
);
CREATE INDEX IF NOT EXISTS facts_by_relation ON facts (relation, status);
CREATE TABLE IF NOT EXISTS prompts (
    fact_id TEXT NOT NULL REFERENCES facts (id),
    idx INTEGER NOT NULL,
    template TEXT NOT NULL,
    text TEXT NOT NULL,
    probability REAL NOT NULL,
    rank INTEGER NOT NULL,
    objective REAL NOT NULL,
    position INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    layers INTEGER NOT NULL,
    neurons INTEGER NOT NULL,
    scores BLOB NOT NULL,
    activations BLOB NOT NULL,
    baseline BLOB NOT NULL,
    completeness_gap BLOB NOT NULL,
    PRIMARY KEY (fact_id, idx)
);
CREATE TABLE IF NOT EXISTS neurons (
    fact_id TEXT NOT NULL REFERENCES facts (id),
    kind TEXT NOT NULL CHECK (kind IN ('refined', 'coarse', 'baseline')),
    prompt INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    neuron INTEGER NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (fact_id, kind, prompt, rank)
);
CREATE INDEX IF NOT EXISTS neurons_by_unit ON neurons (kind, layer, neuron);
CREATE TABLE IF NOT EXISTS generic (
    layer INTEGER NOT NULL,
    neuron INTEGER NOT NULL,
    facts INTEGER NOT NULL,
    share REAL NOT NULL,
    flagged INTEGER NOT NULL,
    PRIMARY KEY (layer, neuron)
);
CREATE TABLE IF NOT EXISTS results (
    study TEXT NOT NULL,
    variant TEXT NOT NULL,
    relation TEXT NOT NULL DEFAULT '',
    fact_id TEXT NOT NULL DEFAULT '',
    metric TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS results_by_study ON results (study);
CREATE INDEX IF NOT EXISTS results_by_fact ON results (fact_id, study);
"""


def param(params: Mapping[str, Any], key: str) -> Any:
    """``params[key]``, or what its absence means (:data:`PARAM_DEFAULTS`: an atlas made before estimators)."""
    return params.get(key, PARAM_DEFAULTS.get(key))


def meta_rows(identity: Mapping[str, Any], params: Mapping[str, Any], kneuron_version: str) -> list[tuple[str, str]]:
    """The meta table of a new atlas as ``(key, JSON value)`` rows: schema version, model identity, provenance,
    creation time, the run's params and the generic table's default settings."""
    import torch
    import transformers

    meta = {"schema_version": SCHEMA_VERSION, **dict(identity), "kneuron_version": kneuron_version,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "params": dict(params), "generic": {"share": 0.1, "min_facts": 2, "facts": 0}}
    return [(key, json.dumps(value)) for key, value in meta.items()]


def check_version(meta: Mapping[str, Any], path: Path) -> None:
    """Refuse an atlas of another schema version than this kneuron's.

    Raises:
        AtlasError: ``meta``'s schema_version is not :data:`SCHEMA_VERSION`.
    """
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise AtlasError(f"{quoted(path)} has atlas schema version {version!r}; this kneuron reads "
                         f"version {SCHEMA_VERSION}. Re-run into a new file, or use the matching kneuron.")


def check_identity(meta: Mapping[str, Any], identity: Mapping[str, Any], params: Mapping[str, Any], path: Path,
                   ) -> None:
    """Refuse to continue the atlas at ``path`` (its ``meta``) with another model or other parameters.

    Raises:
        AtlasError: a key of :data:`IDENTITY_KEYS` or a param differs (the message lists every difference).
    """
    model = [f"{key}: atlas {meta.get(key)!r}, this run {identity.get(key)!r}" for key in IDENTITY_KEYS
             if meta.get(key) != identity.get(key)]
    stored = meta.get("params", {})
    extra = sorted((set(stored) | set(params)) - set(PARAM_KEYS))  # an estimator's own params (e.g. lpi's)
    other = [f"{key}: atlas {param(stored, key)!r}, this run {param(params, key)!r}"
             for key in (*PARAM_KEYS, *extra) if param(stored, key) != param(params, key)]
    if model or other:
        what = " and ".join(part for part, found in (("model", model), ("parameters", other)) if found)
        raise AtlasError(
            f"{quoted(path)} holds a run of {meta.get('model')} ({meta.get('n_layers')} x "
            f"{meta.get('n_neurons')}) made with another model or other parameters: this run differs in its "
            f"{what}. An atlas holds one model and one set of parameters, so this run cannot continue it. To "
            f"start a new one, {NEW_ATLAS_HINT}.\nDifferences: " + "; ".join(model + other)
        )
