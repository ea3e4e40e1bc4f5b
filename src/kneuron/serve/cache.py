"""Pages that summarise the whole atlas (the overview: counts, layer distribution and most shared neurons over
every fact) are computed once per state of the atlas, not once per request.

The state is the atlas file's and its write-ahead log's size and modification time (:func:`change_token`): every
commit of a run changes the log, every checkpoint the file. The token is read before the page is computed, so a
page is never kept under a token older than what it shows... and one computed from a newer state than its token
is recomputed at the next request. Concurrent requests for the same page wait for one computation
(single flight). At most ``size`` pages are kept (least recently used dropped).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any


def change_token(path: Path) -> tuple:
    """(size, mtime_ns, inode) of the atlas and of its ``-wal`` file (None when it has none): the inode changes when
    the atlas is replaced by another file (``kneuron run --overwrite``)."""
    def stat(target: Path):
        try:
            found = os.stat(target)
        except FileNotFoundError:
            return None
        return found.st_size, found.st_mtime_ns, found.st_dev, found.st_ino

    return stat(path), stat(Path(f"{path}-wal"))


class PageCache:
    """Pages by key, each valid while the atlas's :func:`change_token` stays the same."""

    def __init__(self, path: Path, size: int = 64) -> None:
        self.path = Path(path)
        self.size = size
        self._pages: OrderedDict[Hashable, tuple[tuple, Any]] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.computed = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            token = change_token(self.path)
            with self._guard:
                entry = self._pages.get(key)
                if entry is not None and entry[0] == token:
                    self._pages.move_to_end(key)
                    return entry[1]
            value = compute()
            with self._guard:
                self.computed += 1
                self._pages[key] = (token, value)
                self._pages.move_to_end(key)
                while len(self._pages) > self.size:
                    dropped, _ = self._pages.popitem(last=False)
                    if dropped != key:
                        self._locks.pop(dropped, None)
            return value
