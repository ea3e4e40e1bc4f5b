"""The atlas's connection: opening an atlas (or creating the one a run writes), the run lock, write transactions,
snapshot reads, and the one place SQL statements are executed and SQLite's errors translated.

:class:`AtlasConnection` is the base of :class:`kneuron.store.Atlas`; the tables' reads and writes
(:mod:`kneuron.store.facts_table`, :mod:`kneuron.store.neurons_table`, :mod:`kneuron.store.results_table`) build on
it. Every read goes through :meth:`AtlasConnection._select`, so any SQLite error becomes one line that says what to
do (:func:`kneuron.store.files.translate`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kneuron.errors import AtlasError
from kneuron.store import files
from kneuron.store.columns import check_rows
from kneuron.store.files import damaged, quoted, translate
from kneuron.store.schema import SCHEMA, check_identity, check_version, meta_rows

__all__ = ["BUSY_TIMEOUT", "AtlasConnection"]

#: seconds a writer waits for another connection's write transaction before giving up
BUSY_TIMEOUT = 10.0

_Self = TypeVar("_Self", bound="AtlasConnection")


class AtlasConnection:
    """An open atlas file: one SQLite connection, the run lock of a run's writer, transactions and snapshots.

    Open one with :meth:`open` (readers, and writers of studies) or :meth:`for_run` (a run); use as a context
    manager (or call :meth:`close`).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, read_only: bool) -> None:
        self._db = connection
        self.path = path
        self.read_only = read_only
        self._meta: dict[str, Any] | None = None
        self._lock_fd: int | None = None
        #: whether :meth:`for_run` created the file (a run that fails before its first fact deletes it again)
        self.created = False
        #: a reader that found no -wal / -shm beside the atlas removes the ones SQLite made for it when it closes
        #: (a read-only connection cannot): a refused or read atlas is left as it was found
        self._tidy = False

    # -------------------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls: type[_Self], path: str | Path, read_only: bool = False, check: bool = True) -> _Self:
        """Open the atlas at ``path``; ``read_only`` for readers (they may read while a run writes).

        Checks that the file is an atlas (see :mod:`kneuron.store.files`) and runs SQLite's quick integrity check,
        which reads every page: ``check=False`` skips it, for a server that opens one more connection per thread
        to an atlas it checked once (damage found later still raises the damaged-atlas error when read).

        Raises:
            AtlasError: no file, not an atlas, a damaged one, a newer schema, or (writing) a read-only file.
        """
        if not str(path):
            raise AtlasError("An empty path is no atlas: give the .sqlite file a `kneuron run --out PATH` wrote.")
        path = Path(path).expanduser()
        files.check_kind(path)
        if not path.is_file():
            raise AtlasError(f"No atlas at {quoted(path)}: make one with `kneuron run --out {path}`.")
        tidy = read_only and not any(os.path.lexists(f"{path}{suffix}") for suffix in files.SIDECARS)
        with files.tidy_on_refusal(path):  # a refused file keeps no -wal / -shm of this connection
            kind = files.probe(path)
            atlas = cls._connect(path, read_only)
            with atlas._closed_on_error():
                if check:
                    files.quick_check(atlas._db, path)
                atlas._check_version()
                if kind == "legacy" and not read_only:
                    atlas._stamp()
        atlas._tidy = tidy
        return atlas

    @classmethod
    def _connect(cls: type[_Self], path: Path, read_only: bool) -> _Self:
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
                    raise AtlasError(f"Could not switch {quoted(path)} to WAL mode (got {mode!r}).")
                connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: safe against process crashes
        return atlas

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        """While setting up: on any error close the connection; SQLite's errors become AtlasErrors."""
        try:
            yield
        except sqlite3.Error as exc:
            self.close()
            raise translate(self.path, exc) from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_run(cls: type[_Self], path: str | Path, identity: Mapping[str, Any], params: Mapping[str, Any], *,
                overwrite: bool = False, kneuron_version: str = "") -> _Self:
        """The atlas a run writes: created when missing (or replaced with ``overwrite``), else checked to be an
        atlas, undamaged, and of the same model and parameters. Holds the run lock (one run per atlas at a time)
        until closed. ``atlas.created`` says whether this call created the file.

        Raises:
            AtlasError: another model or other parameters, another run holds the lock, a read-only file,
                a damaged atlas, or a file that is not an atlas (refused also with ``overwrite``).
        """
        if not str(path):
            raise AtlasError("An empty --out path is no atlas: give the .sqlite file, e.g. runs/demo.sqlite.")
        path = Path(path).expanduser()
        files.check_kind(path)
        if path.is_dir():
            raise AtlasError(f"{quoted(path)} is a folder: give the atlas's file, e.g. {path / 'run.sqlite'}.")
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
                raise AtlasError(f"Cannot make the folder of {quoted(path)} ({exc.strerror}); choose another "
                                 "--out path.") from None
            if not os.access(path.parent, os.W_OK | os.X_OK):
                raise files.read_only(path, f"its folder {path.parent} is not writable")
            files.create(path, SCHEMA, meta_rows(identity, params, kneuron_version))
        atlas = cls._connect(path, read_only=False)
        with atlas._closed_on_error():
            atlas._lock_for_run()
            if not created:
                files.quick_check(atlas._db, path)
                atlas._check_version()
                check_identity(atlas.meta, identity, params, path)
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
        check_version(self.meta, self.path)

    def close(self) -> None:
        """Close the connection (a writer checkpoints the WAL into the file) and release the run lock."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._tidy:
            self._tidy = False
            if any(os.path.lexists(f"{self.path}{suffix}") for suffix in files.SIDECARS):
                files.close_last_connection(self.path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # after the connection: closing an fd drops this process's POSIX locks
            self._lock_fd = None

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, read_only={self.read_only})"

    # -------------------------------------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception)."""
        if self.read_only:
            raise AtlasError(f"{quoted(self.path)} was opened read-only; open it with read_only=False to write.")
        if self._db.in_transaction:
            raise AtlasError(f"Cannot write to {quoted(self.path)} inside a snapshot or another transaction: "
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
    def snapshot(self: _Self) -> Iterator[_Self]:
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
        """The meta table as a dict (values decoded from JSON); see :mod:`kneuron.store.schema` for the keys."""
        if self._meta is None:
            _, rows = self._select("SELECT key, value FROM meta", checked=False)  # value: JSON text, not a number
            meta = {key: self._json(value, f"meta value {key!r}") for key, value in rows}
            self._check_meta(meta)
            self._meta = meta
        return self._meta

    def _check_meta(self, meta: Mapping[str, Any]) -> None:
        """Refuse meta values of the wrong kind (the model's shape a number, the params an object): read unchecked,
        they failed later as a ValueError in whatever used them."""
        for key in ("n_layers", "n_neurons"):
            if key in meta and not (type(meta[key]) is int and meta[key] >= 0):
                raise damaged(self.path, f"its meta value {key!r} is {meta[key]!r}, not a count")
        for key in ("params", "generic", "coverage"):
            if key in meta and not isinstance(meta[key], dict):
                raise damaged(self.path, f"its meta value {key!r} is {meta[key]!r}, not a JSON object")

    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters (meta ``params``), a copy."""
        return dict(self.meta.get("params", {}))

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of an ad-hoc query as dicts (for a user's own queries: kneuron's code reads through
        :mod:`kneuron.store.queries` and the table methods). Its values are returned as stored, unchecked (a user's
        query may name its columns anything).

        Example:
            >>> atlas.query("SELECT id, status FROM facts WHERE relation = ?", ["capital"])
        """
        names, rows = self._select(sql, params, checked=False)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """kneuron's own reads as dicts, each value checked to be of its column's kind
        (:mod:`kneuron.store.columns`)."""
        names, rows = self._select(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple]:
        """Every read goes through here (or :meth:`_rows`): SQLite's errors become one AtlasError."""
        return self._select(sql, params)[1]

    def columns(self, sql: str) -> list[str]:
        """The column names of a query, also when it returns no rows."""
        return self._select(f"SELECT * FROM ({sql}) LIMIT 0")[0]

    def _select(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (), checked: bool = True,
                ) -> tuple[list[str], list[tuple]]:
        """Run one read; ``checked``: refuse a value of the wrong kind for its column (a layer that is text, a
        score that is a BLOB, a layer outside the model) as the damaged-atlas error."""
        try:
            cursor = self._db.execute(sql, params)
            names, rows = [d[0] for d in cursor.description or ()], cursor.fetchall()
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from None
        if checked:
            check_rows(self.path, names, rows, self.meta if any(n in ("layer", "neuron") for n in names) else None)
        return names, rows

    def _numbers_only(self, rows: Sequence[tuple], column: str) -> None:
        """For a query that averages ``column`` (SQLite's avg() reads text as 0, silently) and counts, as its last
        value per row, the values that are no number (``sum(typeof(x) NOT IN ('integer', 'real'))``): refuse any."""
        if any(row[-1] for row in rows):
            raise damaged(self.path, f"its {column} column holds values that are no number")

    def stored_json(self, text: str | None, what: str) -> Any:
        """A JSON value stored in the atlas (``what`` names it in the error); undecodable means the file is
        damaged.

        Raises:
            AtlasError: not JSON (the damaged-atlas error).
        """
        return self._json(text, what)

    def _json(self, text: str | None, what: str) -> Any:
        """A JSON value stored in the atlas; undecodable means the file is damaged."""
        try:
            return json.loads(text) if text is not None else None
        except (TypeError, ValueError) as exc:
            raise damaged(self.path, f"{what} is not valid JSON: {exc}") from None
