"""The server's read-only connections to its atlas: one per request thread, opened on first use, all closed at
shutdown.

SQLite connections must not be shared between threads, and the web server answers requests on a pool of worker
threads, so each thread gets its own read-only :class:`~kneuron.store.Atlas`. Opening one is cheap: it checks the
file is an atlas of a schema this kneuron reads, but skips SQLite's page-by-page integrity check (a full scan of the
file; it runs once, on request, with ``kneuron atlas``), so the server starts in the same time for any atlas size.
Each page reads inside one snapshot of its connection (:meth:`Atlas.snapshot`), so it shows one moment of an atlas
a run may be writing. The pool is as large as the server's thread pool, so the connections are bounded too.
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
        self._open: list[Atlas] = []
        self.closed = False
        first = Atlas.open(self.path, read_only=True, check=False)  # refuses a missing, foreign or newer file now
        self._local.atlas = first
        self._open.append(first)

    def get(self) -> Atlas:
        """This thread's connection (opened on the thread's first request)."""
        atlas = getattr(self._local, "atlas", None)
        if atlas is None:
            atlas = Atlas.open(self.path, read_only=True, check=False)
            with self._lock:
                if self.closed:
                    atlas.close()
                    raise RuntimeError("the server is shutting down")
                self._open.append(atlas)
            self._local.atlas = atlas
        return atlas

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for atlas in self._open:
                atlas.close()
            self._open.clear()
