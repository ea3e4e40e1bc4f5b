"""The server's per-thread atlas connections: one per live thread, those of ended threads closed."""

from __future__ import annotations

import threading

from kneuron.serve.readers import AtlasReaders


def test_connections_of_ended_threads_are_closed(serve_atlas):
    readers = AtlasReaders(serve_atlas)
    seen = []

    def use() -> None:
        atlas = readers.get()
        with atlas.snapshot():
            seen.append(atlas.query("SELECT count(*) AS n FROM facts")[0]["n"])
        assert readers.get() is atlas  # the same connection for the thread's later requests

    for _ in range(30):  # short-lived threads, one after another, as a thread pool's come and go
        thread = threading.Thread(target=use)
        thread.start()
        thread.join()
    assert seen == [10] * 30
    assert readers.connections <= 2  # the first one and the last thread's
    gone = [atlas for thread, atlas in readers._open if thread is not None]
    readers.close()
    assert readers.connections == 0 and all(atlas._db is None or _closed(atlas) for atlas in gone)


def _closed(atlas) -> bool:
    import sqlite3

    try:
        atlas._db.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False
