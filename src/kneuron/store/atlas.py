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

``vocabulary`` (optional, created by ``kneuron study vocabulary``): each knowledge neuron's top promoted and
    suppressed tokens; see :mod:`kneuron.store.vocabulary`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kneuron.attribution.types import KnowledgeNeurons, Neuron, NeuronScores
from kneuron.errors import FactError, KneuronError
from kneuron.facts.fact import Fact
from kneuron.models.identity import model_identity
from kneuron.store import files
from kneuron.store import scores as score_blobs
from kneuron.store.files import NEW_ATLAS_HINT, damaged, quoted, translate

__all__ = ["NEW_ATLAS_HINT", "SCHEMA", "SCHEMA_VERSION", "Atlas", "fact_digest", "from_blob", "model_identity",
           "to_blob", "translate"]

SCHEMA_VERSION = 1
#: seconds a writer waits for another connection's write transaction before giving up
BUSY_TIMEOUT = 10.0
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



# ------------------------------------------------------------------------------------------------ model identity


def fact_digest(ids: Iterable[str]) -> str:
    """BLAKE2b-128 of the sorted, distinct fact ids (one per line): which facts a study covered."""
    import hashlib

    return hashlib.blake2b("\n".join(sorted(set(ids))).encode(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------------------------------- blobs


def to_blob(tensor: torch.Tensor, dtype: str) -> bytes:
    """Raw little-endian bytes of ``tensor`` in numpy ``dtype`` ("float32" or "float64")."""
    return np.ascontiguousarray(tensor.detach().cpu().to(getattr(torch, dtype)).numpy(),
                                dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def from_blob(blob: bytes, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """The tensor :func:`to_blob` stored."""
    array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<")).reshape(tuple(shape))
    return torch.from_numpy(array.astype(np.dtype(dtype), copy=True))


def blob_dtype(scores: torch.Tensor) -> str:
    """float64 for float64 scores, float32 otherwise (lossless for float32, float16 and bfloat16)."""
    return "float64" if scores.dtype == torch.float64 else "float32"


# ------------------------------------------------------------------------------------------------ the atlas


_quoted = quoted


def param(params: Mapping[str, Any], key: str) -> Any:
    """``params[key]``, or what its absence means (:data:`PARAM_DEFAULTS`: an atlas made before estimators)."""
    return params.get(key, PARAM_DEFAULTS.get(key))


class Atlas:
    """One run's results in an SQLite file; see the module docstring for the schema.

    Open an existing atlas with :meth:`open`; :func:`kneuron.store.run` creates them. Use as a context manager
    (or call :meth:`close`).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, read_only: bool) -> None:
        self._db = connection
        self.path = path
        self.read_only = read_only
        self._meta: dict[str, Any] | None = None
        self._lock_fd: int | None = None
        #: whether :meth:`for_run` created the file (a run that fails before its first fact deletes it again)
        self.created = False

    # -------------------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | Path, read_only: bool = False, check: bool = True) -> Atlas:
        """Open the atlas at ``path``; ``read_only`` for readers (they may read while a run writes).

        Checks that the file is an atlas (see :mod:`kneuron.store.files`) and runs SQLite's quick integrity check,
        which reads every page: ``check=False`` skips it, for a server that opens one more connection per thread
        to an atlas it checked once (damage found later still raises the damaged-atlas error when read).

        Raises:
            KneuronError: no file, not an atlas, a damaged one, a newer schema, or (writing) a read-only file.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise KneuronError(f"No atlas at {_quoted(path)}: make one with `kneuron run --out {path}`.")
        kind = files.probe(path)
        atlas = cls._connect(path, read_only)
        with atlas._closed_on_error():
            if check:
                files.quick_check(atlas._db, path)
            atlas._check_version()
            if kind == "legacy" and not read_only:
                atlas._stamp()
        return atlas

    @classmethod
    def _connect(cls, path: Path, read_only: bool) -> Atlas:
        if read_only:
            connection = files.connect_read_only(path, BUSY_TIMEOUT)
        else:
            if path.exists() and not os.access(path, os.W_OK):
                raise files.read_only(path, "no write permission")
            if not os.access(path.parent if str(path.parent) else Path("."), os.W_OK | os.X_OK):
                raise files.read_only(path, f"its folder {path.parent} is not writable")
            try:
                connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            except sqlite3.Error as exc:
                raise translate(path, exc) from None
        atlas = cls(connection, path, read_only)
        with atlas._closed_on_error():
            connection.execute("PRAGMA query_only = 1" if read_only else "PRAGMA query_only = 0")
            if not read_only:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise KneuronError(f"Could not switch {_quoted(path)} to WAL mode (got {mode!r}).")
                connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: safe against process crashes
        return atlas

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        """While setting up: on any error close the connection; SQLite's errors become KneuronErrors."""
        try:
            yield
        except sqlite3.Error as exc:
            self.close()
            raise translate(self.path, exc) from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_run(cls, path: str | Path, identity: Mapping[str, Any], params: Mapping[str, Any], *,
                overwrite: bool = False, kneuron_version: str = "") -> Atlas:
        """The atlas a run writes: created when missing (or replaced with ``overwrite``), else checked to be an
        atlas, undamaged, and of the same model and parameters. Holds the run lock (one run per atlas at a time)
        until closed. ``atlas.created`` says whether this call created the file.

        Raises:
            KneuronError: another model or other parameters, another run holds the lock, a read-only file,
                a damaged atlas, or a file that is not an atlas (refused also with ``overwrite``).
        """
        path = Path(path).expanduser()
        if path.is_dir():
            raise KneuronError(f"{_quoted(path)} is a folder: give the atlas's file, e.g. {path / 'run.sqlite'}.")
        kind = None
        if path.exists() or path.is_symlink():
            if overwrite:
                files.remove(path)
            else:
                kind = files.probe(path)
        created = kind is None
        if created:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KneuronError(f"Cannot make the folder of {_quoted(path)} ({exc.strerror}); choose another "
                                   "--out path.") from None
            if not os.access(path.parent, os.W_OK | os.X_OK):
                raise files.read_only(path, f"its folder {path.parent} is not writable")
            files.create(path, SCHEMA, cls._meta_rows(identity, params, kneuron_version))
        atlas = cls._connect(path, read_only=False)
        with atlas._closed_on_error():
            atlas._lock_for_run()
            if not created:
                files.quick_check(atlas._db, path)
                atlas._check_version()
                atlas._check_identity(identity, params)
                if kind == "legacy":
                    atlas._stamp()
        atlas.created = created
        return atlas

    def _stamp(self) -> None:
        """Write kneuron's application id into an atlas made before kneuron set it."""
        with self.transaction() as db:
            db.execute(f"PRAGMA application_id = {files.APPLICATION_ID}")

    def _lock_for_run(self) -> None:
        """Take the run lock (:func:`kneuron.store.files.lock`) until closed."""
        if self._lock_fd is None:
            self._lock_fd = files.lock(self.path)

    def _check_version(self) -> None:
        version = self.meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise KneuronError(f"{_quoted(self.path)} has atlas schema version {version!r}; this kneuron reads "
                               f"version {SCHEMA_VERSION}. Re-run into a new file, or use the matching kneuron.")

    @staticmethod
    def _meta_rows(identity: Mapping[str, Any], params: Mapping[str, Any], kneuron_version: str,
                   ) -> list[tuple[str, str]]:
        import datetime

        import transformers

        meta = {"schema_version": SCHEMA_VERSION, **dict(identity), "kneuron_version": kneuron_version,
                "torch_version": torch.__version__, "transformers_version": transformers.__version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "params": dict(params), "generic": {"share": 0.1, "min_facts": 2, "facts": 0}}
        return [(key, json.dumps(value)) for key, value in meta.items()]

    def _check_identity(self, identity: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        meta = self.meta
        model = [f"{key}: atlas {meta.get(key)!r}, this run {identity.get(key)!r}" for key in IDENTITY_KEYS
                 if meta.get(key) != identity.get(key)]
        stored = meta.get("params", {})
        extra = sorted((set(stored) | set(params)) - set(PARAM_KEYS))  # an estimator's own params (e.g. lpi's)
        other = [f"{key}: atlas {param(stored, key)!r}, this run {param(params, key)!r}"
                 for key in (*PARAM_KEYS, *extra) if param(stored, key) != param(params, key)]
        if model or other:
            what = " and ".join(part for part, found in (("model", model), ("parameters", other)) if found)
            raise KneuronError(
                f"{_quoted(self.path)} holds a run of {meta.get('model')} ({meta.get('n_layers')} x "
                f"{meta.get('n_neurons')}) made with another model or other parameters: this run differs in its "
                f"{what}. An atlas holds one model and one set of parameters, so this run cannot continue it. To "
                f"start a new one, {NEW_ATLAS_HINT}.\nDifferences: " + "; ".join(model + other)
            )

    def close(self) -> None:
        """Close the connection (a writer checkpoints the WAL into the file) and release the run lock."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # after the connection: closing an fd drops this process's POSIX locks
            self._lock_fd = None

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Atlas({str(self.path)!r}, read_only={self.read_only})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception)."""
        if self.read_only:
            raise KneuronError(f"{_quoted(self.path)} was opened read-only; open it with read_only=False to write.")
        if self._db.in_transaction:
            raise KneuronError(f"Cannot write to {_quoted(self.path)} inside a snapshot or another transaction: "
                               "leave the `with atlas.snapshot():` block first.")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from None
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise translate(self.path, exc) from None
            raise

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Atlas]:
        """Read one consistent state of the atlas: every read inside the block sees the atlas as it was when the
        block began, whatever a run commits meanwhile (one SQLite read transaction; WAL lets the writer go on).

        Every command that reads an atlas reads it inside one snapshot, so its tables always agree with each
        other (each done fact has its neurons and prompts, counts match). Nested blocks share the outer one.

        Example:
            >>> with Atlas.open("runs/demo.sqlite", read_only=True) as atlas, atlas.snapshot():
            ...     facts, neurons = atlas.facts(), atlas.all_refined()   # the same moment
        """
        if self._db.in_transaction:
            yield self
            return
        try:
            self._db.execute("BEGIN DEFERRED")
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read transaction starts here
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise translate(self.path, exc) from None
        self._meta = None  # read meta of this snapshot
        try:
            yield self
        finally:
            self._meta = None
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    # ------------------------------------------------------------------------------------------------ reading

    @property
    def meta(self) -> dict[str, Any]:
        """The meta table as a dict (values decoded from JSON); see the module docstring for the keys."""
        if self._meta is None:
            rows = self._rows("SELECT key, value FROM meta")
            self._meta = {row["key"]: self._json(row["value"], f"meta value {row['key']!r}") for row in rows}
        return self._meta

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.meta.get("params", {}))

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of an ad-hoc query as dicts.

        Example:
            >>> atlas.query("SELECT id, status FROM facts WHERE relation = ?", ["capital"])
        """
        return self._rows(sql, params)

    def _rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        names, rows = self._select(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple]:
        """Every read goes through here (or :meth:`_rows`): SQLite's errors become one KneuronError."""
        return self._select(sql, params)[1]

    def columns(self, sql: str) -> list[str]:
        """The column names of a query, also when it returns no rows."""
        return self._select(f"SELECT * FROM ({sql}) LIMIT 0")[0]

    def _select(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> tuple[list[str], list[tuple]]:
        try:
            cursor = self._db.execute(sql, params)
            return [d[0] for d in cursor.description or ()], cursor.fetchall()
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from None

    def _json(self, text: str | None, what: str) -> Any:
        """A JSON value stored in the atlas; undecodable means the file is damaged."""
        try:
            return json.loads(text) if text is not None else None
        except (TypeError, ValueError) as exc:
            raise damaged(self.path, f"{what} is not valid JSON: {exc}") from None

    def fact_rows(self, status: str | Iterable[str] | None = None, relation: str | None = None,
                  ) -> list[dict[str, Any]]:
        """The facts table's rows (with status, known-filter outcome and timing), in run order."""
        where, args = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in statuses if s not in STATUSES]
            if unknown:
                raise KneuronError(f"Unknown fact status {unknown[0]!r}; use one of {', '.join(STATUSES)}.")
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
        return self._to_fact(self._fact_row(fact_id))

    def _fact_row(self, fact_id: str) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM facts WHERE id = ?", [fact_id])
        if not rows:
            raise KneuronError(f"No fact {fact_id!r} in {_quoted(self.path)}; `kneuron atlas --run {self.path}` "
                               "lists its facts.")
        return rows[0]

    def _done_row(self, fact_id: str) -> dict[str, Any]:
        row = self._fact_row(fact_id)
        if row["status"] != "done":
            raise KneuronError(f"Fact {fact_id!r} is {row['status']} in {_quoted(self.path)}, not done: it has no "
                               "neurons" + (" yet (resume the run)." if row["status"] == "pending" else "."))
        return row

    def _neurons(self, fact_id: str, kind: str) -> list[tuple[int, Neuron]]:
        rows = self._execute("SELECT prompt, layer, neuron, score FROM neurons WHERE fact_id = ? AND kind = ? "
                             "ORDER BY prompt, rank", (fact_id, kind))
        return [(prompt, Neuron(layer, neuron, score)) for prompt, layer, neuron, score in rows]

    def knowledge_neurons(self, fact_id: str) -> KnowledgeNeurons:
        """The fact's refined neurons (best first), its coarse neurons per prompt and its parameters."""
        row = self._done_row(fact_id)
        n_prompts = len(self._json(row["templates"], f"the templates of {fact_id!r}"))
        coarse: list[list[Neuron]] = [[] for _ in range(n_prompts)]
        for prompt, neuron in self._neurons(fact_id, "coarse"):
            coarse[prompt].append(neuron)
        refined = [neuron for _, neuron in self._neurons(fact_id, "refined")]
        return KnowledgeNeurons(refined, coarse, self._to_fact(row),
                                self._json(row["params"] or "{}", f"the params of {fact_id!r}"))

    def baseline_neurons(self, fact_id: str) -> list[Neuron]:
        """The activation-baseline neurons of the fact (largest mean activation, as many as refined)."""
        self._done_row(fact_id)
        return [neuron for _, neuron in self._neurons(fact_id, "baseline")]

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
                completeness_gap=from_blob(row["completeness_gap"], "float64", (row["layers"],)),
                prompt=row["text"], answer=answer, position=row["position"],
                steps=params.get("steps", 20 if estimator == "ig" else 1),  # an estimator without steps takes α = 1
                objective=params.get("objective", "prob"), alphas=params.get("alphas", "right"), estimator=estimator,
                norm=params.get("norm"),
            ))
        return found

    def prompt_sparse(self, fact_id: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per prompt of a fact in a ``keep_scores="sparse"`` atlas: its kept (flat indices, scores, activations);
        a flat index is ``layer * neurons + neuron``."""
        self._done_row(fact_id)
        if self.params.get("keep_scores", "full") != "sparse":
            raise KneuronError(f"{quoted(self.path)} keeps {self.params.get('keep_scores', 'full')} scores, not "
                               "sparse ones: read them with prompt_scores().")
        rows = self._rows("SELECT scores, activations, dtype FROM prompts WHERE fact_id = ? ORDER BY idx", [fact_id])
        return [score_blobs.decode_sparse(row["scores"], row["activations"], row["dtype"]) for row in rows]

    @staticmethod
    def _check_blobs(row: Mapping[str, Any], shape: tuple[int, int], keep: str = "full") -> None:
        """Raise ValueError unless the prompt's BLOBs have the sizes its dtype, shape and ``keep_scores`` say
        (sparse: whole (index, score) entries, an activation per entry, indices inside the matrix)."""
        if row["dtype"] not in ("float32", "float64"):
            raise ValueError(f"unknown dtype {row['dtype']!r}")
        width = np.dtype(row["dtype"]).itemsize
        cells = shape[0] * shape[1]
        sizes = [("baseline", shape[0] * 8), ("completeness_gap", shape[0] * 8)]
        if keep == "full":
            sizes += [("scores", cells * width), ("activations", cells * width)]
        elif keep == "none":
            sizes += [("scores", 0), ("activations", 0)]
        else:
            blob = row["scores"]
            if not isinstance(blob, bytes) or len(blob) % (4 + width):
                raise ValueError(f"its sparse scores BLOB is not whole (index, {row['dtype']}) entries")
            count = len(blob) // (4 + width)
            sizes.append(("activations", count * width))
            index = np.frombuffer(blob[:4 * count], dtype=np.dtype("int32").newbyteorder("<"))
            if count and (index.min() < 0 or index.max() >= cells):
                raise ValueError("its sparse scores BLOB has an index outside the matrix")
        for name, size in sizes:
            if not isinstance(row[name], bytes) or len(row[name]) != size:
                raise ValueError(f"its {name} BLOB does not hold {size} bytes")

    def prompt_rows(self, fact_id: str | None = None) -> list[dict[str, Any]]:
        """The prompts table without its BLOBs (probability, rank, text...), for one fact or all."""
        columns = "fact_id, idx, template, text, probability, rank, objective, position"
        if fact_id is None:
            return self._rows(f"SELECT {columns} FROM prompts ORDER BY fact_id, idx")
        return self._rows(f"SELECT {columns} FROM prompts WHERE fact_id = ? ORDER BY idx", [fact_id])

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
        sql = (f"SELECT n.layer, n.neuron, count(DISTINCT n.fact_id) AS facts, avg(n.score) FROM {join} "
               "WHERE n.kind = 'refined' AND f.status = 'done'")
        args: list[Any] = []
        if relation is not None:
            sql += " AND f.relation = ?"
            args.append(relation)
        sql += " GROUP BY n.layer, n.neuron ORDER BY facts DESC, avg(n.score) DESC, n.layer, n.neuron LIMIT ?"
        rows = self._execute(sql, [*args, k])
        return [(Neuron(layer, neuron, score), facts) for layer, neuron, facts, score in rows]

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
        import time

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
                to_blob(scores.baseline, "float64"), to_blob(scores.completeness_gap, "float64")))
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

    # -------------------------------------------------------------------------------------------- results

    def write_results(self, study: str, rows: Iterable[Mapping[str, Any]], facts: Iterable[str] | None = None,
                      ) -> int:
        """Replace the rows of ``study`` with ``rows`` (dicts with variant, relation, fact_id, metric, value; a
        row's own "study" key, if any, must match) in one transaction. Returns how many were written.

        ``facts``: the ids of the facts the study covered; their count and :func:`fact_digest` are stored with the
        rows (meta ``coverage``), so that a report can tell results that cover every done fact from stale ones.
        """
        if not study:
            raise KneuronError("Give the study's name to write its results under.")
        records = []
        for number, entry in enumerate(rows):
            if entry.get("study", study) != study:
                raise KneuronError(f"Result row {number} belongs to study {entry.get('study')!r}, not {study!r}.")
            try:
                value = entry["value"]
                value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
                records.append((study, str(entry["variant"]), str(entry.get("relation") or ""),
                                str(entry.get("fact_id") or ""), str(entry["metric"]), value))
            except (KeyError, TypeError, ValueError) as exc:
                raise KneuronError(f"Result row {number} of {study!r} is malformed ({exc!r}); each row needs "
                                   "variant, metric and a numeric value (relation and fact_id optional).") from None
        covered = None if facts is None else sorted(set(facts))
        with self.transaction() as db:
            db.execute(RESULTS_BY_FACT)  # an atlas made before the index existed gets it at its next study
            db.execute("DELETE FROM results WHERE study = ?", (study,))
            db.executemany("INSERT INTO results (study, variant, relation, fact_id, metric, value) "
                           "VALUES (?, ?, ?, ?, ?, ?)", records)
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

    def studies(self) -> list[str]:
        return [row["study"] for row in self._rows("SELECT DISTINCT study FROM results ORDER BY study")]

