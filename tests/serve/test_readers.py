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


def test_a_replaced_atlas_is_served_alone(atlas_copy, tmp_path):
    """``kneuron run --overwrite`` deletes the served atlas and links a new file in its place: every request after
    that reads the new file (2 of 80 requests still served a deleted fact from the old one: issue 27, item 1)."""
    import json
    import os
    import shutil
    import sqlite3
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from kneuron.serve.app import create_app
    from kneuron.serve.server import RunningServer

    new = tmp_path / "new.sqlite"
    shutil.copyfile(atlas_copy, new)
    db = sqlite3.connect(new)
    for table, column in (("results", "fact_id"), ("neurons", "fact_id"), ("prompts", "fact_id"), ("facts", "id")):
        db.execute(f"DELETE FROM {table} WHERE {column} = 'capital:France'")
    db.commit()
    db.close()

    def status(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    with RunningServer(create_app(atlas_copy)) as server, ThreadPoolExecutor(8) as pool:
        url = server.url + "/api/fact/capital%3AFrance"
        assert set(pool.map(status, [url] * 80)) == {200}  # many request threads, each with its connection
        assert json.loads(urllib.request.urlopen(server.url + "/api/overview").read())["done"] == 10
        os.unlink(atlas_copy)
        os.link(new, atlas_copy)
        assert set(pool.map(status, [url] * 80)) == {404}
        assert json.loads(urllib.request.urlopen(server.url + "/api/overview").read())["done"] == 9
