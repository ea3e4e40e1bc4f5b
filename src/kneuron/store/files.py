"""The atlas as a file: how kneuron recognises its own SQLite files, creates them, deletes them (``--overwrite``)
and turns SQLite's errors into one line that says what to do.

A user's files are theirs: a run writes only into a file that is provably an atlas, and ``--overwrite`` deletes
only such a file (and its own ``-wal`` / ``-shm`` siblings).

What proves a file is an atlas:
    - an atlas made by this kneuron carries ``PRAGMA application_id = 0x6B6E726E`` ("knrn", set in the creating
      transaction), a ``meta`` table with a ``schema_version``, and no table, view, trigger or index but its own
      (:data:`OWN_OBJECTS`): another program that added a table to an atlas made it a file of two owners, which
      ``--overwrite`` must not delete (nor a run write into);
    - an atlas written before kneuron set the application id (application_id 0) is recognised by its tables:
      exactly ``meta, facts, prompts, neurons, generic, results`` with a ``schema_version`` in ``meta``. The
      first write (``kneuron run``, ``kneuron study``) stamps the application id into it.
Anything else (another program's database, an SQLite file with an extra table, an empty file, a text file) is
refused, also with ``--overwrite``.

A new atlas is created whole, under a temporary name beside it (``.NAME.PID.new``), and then linked to its name
(``os.link``, which fails rather than replace a file that appeared meanwhile), so a run killed at any moment
leaves either no atlas or a complete empty one, never a half-made file that a later run would have to guess about.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

from kneuron.errors import AtlasError

#: ``PRAGMA application_id`` of every atlas: "knrn"
APPLICATION_ID = 0x6B6E726E
#: the tables of schema version 1, which identify an atlas written before the application id
ATLAS_TABLES = frozenset({"meta", "facts", "prompts", "neurons", "generic", "results"})
#: every object an atlas of schema version 1 may hold, by type: the tables and indexes of
#: :data:`kneuron.store.schema.SCHEMA`, the vocabulary study's table (:mod:`kneuron.store.vocabulary`) and the
#: studies' aggregates (:data:`kneuron.store.schema.AGGREGATES`), each made on its first write. SQLite's own
#: (``sqlite_*``: autoindexes, ``sqlite_stat1``) are not listed and always allowed.
OWN_OBJECTS = {"table": ATLAS_TABLES | {"vocabulary", "aggregates"},
               "index": frozenset({"facts_by_relation", "neurons_by_unit", "results_by_study", "results_by_fact"})}
SIDECARS = ("-wal", "-shm")
SQLITE_HEADER = b"SQLite format 3\x00"

NEW_ATLAS_HINT = "write to another file (kneuron run --out runs/OTHER.sqlite) or replace it (--overwrite)"
RECOVER_HINT = ("Start a new atlas: `kneuron run --out runs/NEW.sqlite` with the same facts and settings computes "
                "them again (keep the damaged file to try SQLite's own `sqlite3 OLD.sqlite .recover`, which kneuron "
                "does not check)")


def quoted(path: Path) -> str:
    return f"'{path}'"


def not_an_atlas(path: Path, why: str) -> AtlasError:
    return AtlasError(f"{quoted(path)} is not a kneuron atlas ({why}); kneuron neither writes into nor deletes "
                        "it. Give the .sqlite file a `kneuron run --out PATH` wrote, or another --out path.")


def damaged(path: Path, why: str) -> AtlasError:
    return AtlasError(f"{quoted(path)} is damaged ({why}), so kneuron cannot trust what it reads from it. "
                        f"{RECOVER_HINT}.")


def locked(path: Path) -> AtlasError:
    return AtlasError(
        f"{quoted(path)} is locked by another writer (another kneuron run, or a program holding a write "
        f"transaction on it). Wait for it to finish, or {NEW_ATLAS_HINT}."
    )


def read_only(path: Path, why: str = "") -> AtlasError:
    return AtlasError(
        f"{quoted(path)} is read-only{f' ({why})' if why else ''}: kneuron cannot write to it. Make it writable "
        f"(chmod u+w, and its folder too: SQLite keeps a -wal file beside it) or {NEW_ATLAS_HINT}."
    )


def translate(path: Path, exc: sqlite3.Error) -> AtlasError:
    """An sqlite3 error as an AtlasError that says what to do."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return locked(path)
    if "readonly" in text or "read-only" in text:
        return read_only(path)
    if "not a database" in text:
        return not_an_atlas(path, f"{exc}: another kind of file, or an atlas whose first page is damaged")
    if any(word in text for word in ("malformed", "corrupt", "could not decode", "disk i/o")):
        return damaged(path, f"SQLite: {exc}")
    return AtlasError(f"SQLite error on {quoted(path)}: {exc}")


def identify(db: sqlite3.Connection, path: Path) -> str | None:
    """What the database behind ``db`` is: ``"atlas"`` (this kneuron's application id), ``"legacy"`` (an atlas
    written before it, recognised by its tables) or None (no tables at all: a fresh database kneuron is creating).

    Raises:
        AtlasError: anything else (another program's database, or not SQLite), or a damaged file.
    """
    try:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        objects = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite^_%' ESCAPE '^'"
                             ).fetchall()
        tables = {name for (kind, name) in objects if kind == "table"}
        version = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else None
    except sqlite3.Error as exc:
        raise translate(path, exc) from None
    listed = ", ".join(f"table {name}" for name in sorted(tables)[:5]) or "no tables"
    foreign = sorted(f"{kind} {name}" for kind, name in objects if name not in OWN_OBJECTS.get(kind, ()))
    if application_id == APPLICATION_ID:
        if "meta" not in tables or version is None:
            raise damaged(path, "it carries kneuron's application_id but has no schema_version in a meta table")
        if foreign:
            raise not_an_atlas(path, "an atlas into which another program added "
                                     f"{', '.join(foreign[:5])}{' and more' if len(foreign) > 5 else ''}")
        return "atlas"
    if application_id:
        raise not_an_atlas(path, f"an SQLite database of another program: application_id {application_id}, {listed}")
    if not tables and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        return None
    if tables == ATLAS_TABLES and version is not None and not foreign:
        return "legacy"
    raise not_an_atlas(path, f"an SQLite database with {listed}")


def check_kind(path: Path) -> None:
    """Refuse, before anything opens it, a path that is neither absent nor a regular file (or a link to one): a
    dangling symbolic link, a FIFO (opening one blocks until another program writes to it), a socket or a
    device. A folder is left to the callers (each says what to give instead).

    Raises:
        AtlasError: what ``path`` is, in one line.
    """
    if not str(path):
        raise AtlasError("An empty path is no atlas: give the .sqlite file, e.g. runs/demo.sqlite.")
    try:
        found = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise AtlasError(f"{quoted(path)} is a symbolic link to {os.readlink(path)!r}, which does not exist; "
                             "kneuron does not follow it. Remove the link, or give another path.") from None
        return
    except OSError as exc:
        raise AtlasError(f"Cannot read {quoted(path)} ({exc.strerror}); give another path.") from None
    if not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(found.st_mode) else \
            "a socket" if stat.S_ISSOCK(found.st_mode) else "a device or other special file"
        raise AtlasError(f"{quoted(path)} is {kind}, not a file; kneuron reads and writes atlases only as regular "
                         "files. Give another path.")


def probe(path: Path) -> str | None:
    """:func:`identify` for the file at ``path`` without opening it for writing (an empty file is not an atlas).

    Raises:
        AtlasError: not an atlas, or damaged.
    """
    check_kind(path)
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise AtlasError(f"Cannot read {quoted(path)} ({exc.strerror}); give another path.") from None
    if not header:
        raise not_an_atlas(path, "an empty file; if a run killed at its start left it, delete it")
    if header != SQLITE_HEADER:
        raise not_an_atlas(path, "not an SQLite database, or an atlas whose first page is damaged")
    with tidy_on_refusal(path):
        db = connect_read_only(path)
        try:
            found = identify(db, path)
        finally:
            db.close()
    if found is None:
        raise not_an_atlas(path, "an SQLite database without tables")
    return found


@contextlib.contextmanager
def tidy_on_refusal(path: Path) -> Iterator[None]:
    """Around opening a file for reading: when the block raises (a damaged atlas, not an atlas) and the file had
    no ``-wal`` / ``-shm`` before, remove the ones SQLite made for the read-only connection (a WAL database read
    read-only gets both, and a read-only connection cannot remove them at close), so a refused file is left as it
    was found.

    They are removed the way SQLite removes them: by closing a read-write connection, which deletes them only when
    no other connection has the database open (and writes nothing: their log is empty).
    """
    existed = any(os.path.lexists(f"{path}{suffix}") for suffix in SIDECARS)
    try:
        yield
    except BaseException:
        if not existed and any(os.path.lexists(f"{path}{suffix}") for suffix in SIDECARS):
            close_last_connection(path)
        raise


def close_last_connection(path: Path) -> None:
    """Let SQLite remove the -wal / -shm files of ``path`` if no connection has it open (a read-write connection
    that closes last removes them; it writes nothing when their log is empty)."""
    with contextlib.suppress(sqlite3.Error, OSError, ValueError):
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True, timeout=0, isolation_level=None)
        try:
            with contextlib.suppress(sqlite3.Error):
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the log, so close removes it
        finally:
            db.close()


def connect_read_only(path: Path, timeout: float = 10.0) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``); a WAL database on read-only media or in a read-only folder (where
    no -shm file can be made) is read as an immutable file. Usable from one thread at a time, not only the one
    that opened it (``kneuron serve`` closes its per-thread connections from the thread that shuts it down)."""
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None,
                             check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.Error as exc:
        if "not a database" in str(exc).lower() or "malformed" in str(exc).lower():
            raise translate(path, exc) from None
    try:
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None,
                             check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.Error as exc:
        raise translate(path, exc) from None


def quick_check(db: sqlite3.Connection, path: Path) -> None:
    """SQLite's ``PRAGMA quick_check`` (every page's structure, without cross-checking the indexes): 0.25 s on a
    553 MB file in the page cache. Raises the damaged-atlas error on any finding."""
    try:
        rows = db.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.Error as exc:
        raise translate(path, exc) from None
    findings = [row[0] for row in rows]
    if findings != ["ok"]:
        raise damaged(path, "SQLite's integrity check found: " + "; ".join(" ".join(f.split()) for f in findings))


def check_sidecars(path: Path) -> None:
    """Refuse to create an atlas beside a -wal or -shm file of a database that is not there: SQLite would
    replay that other database's WAL into the new atlas."""
    for suffix in SIDECARS:
        sidecar = Path(f"{path}{suffix}")
        if sidecar.exists():
            raise AtlasError(f"{quoted(sidecar)} exists but {quoted(path)} does not: it belongs to another "
                               "database (or a deleted one), and SQLite would replay it into a new atlas. Move it "
                               "away, or choose another --out path.")


def create(path: Path, schema: str, meta: list[tuple[str, str]]) -> None:
    """Create the atlas at ``path`` whole: schema, meta and application id, written under a temporary name beside
    it and linked into place only when complete.

    Raises:
        AtlasError: a file appeared at ``path`` meanwhile, or the folder is not writable.
    """
    check_sidecars(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    for suffix in ("", "-journal"):  # a leftover of a killed process that had this pid
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{temporary}{suffix}")
    try:
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("COMMIT")
        finally:
            db.close()
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise AtlasError(f"{quoted(path)} appeared while kneuron was creating an atlas there (another run?); "
                               "run again to continue it, or choose another --out path.") from None
        except OSError:  # a file system without hard links: claim the name, then replace the claim
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                raise AtlasError(f"{quoted(path)} appeared while kneuron was creating an atlas there; run "
                                   "again, or choose another --out path.") from None
            os.replace(temporary, path)
    except sqlite3.Error as exc:
        raise translate(path, exc) from None
    finally:
        for suffix in ("", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{temporary}{suffix}")


def remove(path: Path) -> None:
    """Delete the atlas at ``path`` and its own -wal/-shm files; anything not provably an atlas is refused.

    Takes the run lock first, so the atlas of a run still going is not deleted under it.
    """
    probe(path)
    fd = lock(path)
    try:
        for suffix in ("", *SIDECARS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
    finally:
        if fd is not None:
            os.close(fd)


def lock(path: Path) -> int | None:
    """Take the run lock: an exclusive ``flock`` on the file, released when its fd is closed or the process dies.
    Returns the fd (None where there is no flock, on Windows).

    Raises:
        AtlasError: another run holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no run lock (SQLite's own locking still keeps every transaction whole)
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise locked(path) from None
    return fd
