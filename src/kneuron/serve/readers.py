"""The server's read-only connections to its atlas: one per request thread, opened on first use, all closed at
shutdown.

SQLite connections must not be shared between threads, and the web server answers requests on a pool of worker
threads, so each thread gets its own read-only :class:`~kneuron.store.Atlas`. The pool's idle threads end after a
while and new ones start, so a connection whose thread has ended is closed when the next one opens: the open
connections are never more than the threads alive (plus the first, kept for the server's own reads).

Opening one is cheap: it checks the file is an atlas of a schema this kneuron reads, but skips SQLite's
page-by-page integrity check (a full scan of the file; ``kneuron atlas`` runs it), so the server starts in the same
time for any atlas size. Each page reads inside one snapshot of its connection (:meth:`Atlas.snapshot`), so it
shows one moment of an atlas a run may be writing.
"""

from __future__ import annotations

import threading
from pathlib import Path

from kneuron.store import Atlas


class AtlasReaders:
    """Thread-local read-only connections to the atlas at ``path`` (checked to be one when created)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[tuple[threading.Thread | None, Atlas]] = []
        self.closed = False
        file_id = self._file_id(self.path)
        first = Atlas.open(self.path, read_only=True, check=False)  # refuses a missing, foreign or newer file now
        self._local.atlas, self._local.file_id = first, file_id
        self._open.append((None, first))

    def get(self) -> Atlas:
        """This thread's connection (opened on the thread's first request), to the file at the path now: when the
        atlas was replaced (``kneuron run --overwrite`` deletes it and links a new file there: another inode), the
        connection to the old file is closed and one to the new file opened, so no page reads the old one."""
        atlas = getattr(self._local, "atlas", None)
        if atlas is not None and self._file_id(atlas.path) != getattr(self._local, "file_id", None):
            self._drop(atlas)
            atlas = self._local.atlas = None
        if atlas is None:
            file_id = self._file_id(self.path)
            atlas = Atlas.open(self.path, read_only=True, check=False)
            with self._lock:
                if self.closed:
                    atlas.close()
                    raise RuntimeError("the server is shutting down")
                ended = [a for thread, a in self._open if thread is not None and not thread.is_alive()]
                self._open = [(t, a) for t, a in self._open if t is None or t.is_alive()]
                self._open.append((threading.current_thread(), atlas))
            for old in ended:  # their threads are gone: nobody else uses them
                old.close()
            self._local.atlas, self._local.file_id = atlas, file_id
        return atlas

    @staticmethod
    def _file_id(path: Path) -> tuple[int, int] | None:
        """(device, inode) of the file at ``path``, None when there is none."""
        try:
            found = path.stat()
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def _drop(self, atlas: Atlas) -> None:
        """Close this thread's connection to a file that is no longer the atlas."""
        with self._lock:
            self._open = [(t, a) for t, a in self._open if a is not atlas]
        atlas.close()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for _, atlas in self._open:
                atlas.close()
            self._open.clear()
