"""A run creates a new atlas or continues one; it never takes over, nor deletes, a file kneuron did not make
(issue #10, item 1). An atlas is recognised by the ``application_id`` set at its creation; one written before
kneuron set it, by its exact set of tables and its meta table."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.errors import KneuronError
from kneuron.store import Atlas, run
from store.helpers import RUN_ARGS, dump, tiny_facts, tiny_model, write_facts_file

runner = CliRunner()


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def users_database(path, *, wal: bool = False):
    """An SQLite database of the user's: a table ``t`` with one row (in WAL mode, left with its -wal file)."""
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute("INSERT INTO t VALUES ('precious')")
    return db


def files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_sqlite_database_is_neither_taken_over_nor_deleted(lm, tmp_path, overwrite):
    path = tmp_path / "mine.sqlite"
    users_database(path).close()
    before = dump(path)
    with pytest.raises(KneuronError, match="is not a kneuron atlas.*table t"):
        run(lm, tiny_facts()[:1], path, **RUN_ARGS, overwrite=overwrite)
    assert dump(path) == before == {"t": [("precious",)]}
    assert files(tmp_path) == ["mine.sqlite"]


def test_the_wal_files_of_a_foreign_database_are_left_alone(lm, tmp_path):
    path = tmp_path / "mine.sqlite"
    holder = users_database(path, wal=True)  # open: its -wal and -shm files exist and hold the row
    try:
        assert files(tmp_path) == ["mine.sqlite", "mine.sqlite-shm", "mine.sqlite-wal"]
        with pytest.raises(KneuronError, match="not a kneuron atlas"):
            run(lm, tiny_facts()[:1], path, **RUN_ARGS, overwrite=True)
        assert files(tmp_path) == ["mine.sqlite", "mine.sqlite-shm", "mine.sqlite-wal"]
        assert holder.execute("SELECT x FROM t").fetchall() == [("precious",)]
    finally:
        holder.close()


def test_a_wal_file_without_its_database_is_not_adopted(lm, tmp_path):
    """Creating an atlas beside another database's -wal file would let SQLite replay that WAL into it."""
    (tmp_path / "new.sqlite-wal").write_bytes(b"someone's wal")
    with pytest.raises(KneuronError, match="-wal"):
        run(lm, tiny_facts()[:1], tmp_path / "new.sqlite", **RUN_ARGS)
    assert files(tmp_path) == ["new.sqlite-wal"]


@pytest.mark.parametrize("content", [b"", b"plain text, not a database\n" * 50, b"SQLite format 3\x00" + bytes(84)])
@pytest.mark.parametrize("overwrite", [False, True])
def test_any_other_existing_file_is_refused(lm, tmp_path, content, overwrite):
    path = tmp_path / "other.sqlite"
    path.write_bytes(content)
    with pytest.raises(KneuronError, match="not a kneuron atlas"):
        run(lm, tiny_facts()[:1], path, **RUN_ARGS, overwrite=overwrite)
    assert path.read_bytes() == content and files(tmp_path) == ["other.sqlite"]


def test_another_programs_application_id_is_refused(lm, tmp_path):
    path = tmp_path / "app.sqlite"
    run(lm, tiny_facts()[:1], path, **RUN_ARGS)
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id = 1234")
    db.commit()
    db.close()
    before = dump(path)
    for overwrite in (False, True):
        with pytest.raises(KneuronError, match="not a kneuron atlas.*application_id 1234"):
            run(lm, tiny_facts()[:1], path, **RUN_ARGS, overwrite=overwrite)
    assert dump(path) == before


def test_an_atlas_carries_the_kneuron_application_id(lm, tmp_path):
    from kneuron.store.files import APPLICATION_ID

    path = tmp_path / "new.sqlite"
    run(lm, tiny_facts()[:1], path, **RUN_ARGS)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID == 0x6B6E726E  # "knrn"
    db.close()


def legacy(path):
    """Make ``path`` look like an atlas written before kneuron set its application_id."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id = 0")
    db.commit()
    db.close()


def test_an_atlas_written_before_the_application_id_is_continued_and_stamped(lm, tmp_path):
    from kneuron.store.files import APPLICATION_ID

    path = tmp_path / "old.sqlite"
    run(lm, tiny_facts()[:1], path, **RUN_ARGS)
    legacy(path)
    with Atlas.open(path, read_only=True) as atlas:
        assert len(atlas.facts()) == 1
    summary = run(lm, tiny_facts()[:2], path, **RUN_ARGS)
    assert (summary.already_done, summary.computed) == (1, 1)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()
    legacy(path)
    assert run(lm, tiny_facts()[:1], path, **{**RUN_ARGS, "steps": 7}, overwrite=True).computed == 1


def test_an_old_atlas_with_a_foreign_table_is_not_provably_an_atlas(lm, tmp_path):
    path = tmp_path / "mixed.sqlite"
    run(lm, tiny_facts()[:1], path, **RUN_ARGS)
    legacy(path)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x TEXT)")
    db.commit()
    db.close()
    before = dump(path)
    for overwrite in (False, True):
        with pytest.raises(KneuronError, match="not a kneuron atlas"):
            run(lm, tiny_facts()[:1], path, **RUN_ARGS, overwrite=overwrite)
    with pytest.raises(KneuronError, match="not a kneuron atlas"):
        Atlas.open(path, read_only=True)
    assert dump(path) == before


def test_overwrite_replaces_an_atlas_and_its_wal_files(lm, tmp_path):
    path = tmp_path / "a.sqlite"
    run(lm, tiny_facts()[:2], path, **RUN_ARGS)
    (tmp_path / "a.sqlite-wal").write_bytes(b"")  # stale siblings of the atlas (a killed run)
    (tmp_path / "a.sqlite-shm").write_bytes(b"")
    (tmp_path / "mine.sqlite-wal").write_bytes(b"not the atlas's")
    assert run(lm, tiny_facts()[:1], path, **{**RUN_ARGS, "steps": 7}, overwrite=True).computed == 1
    with Atlas.open(path, read_only=True) as atlas:
        assert atlas.meta["params"]["steps"] == 7 and len(atlas.facts()) == 1
    assert (tmp_path / "mine.sqlite-wal").read_bytes() == b"not the atlas's"


def test_the_cli_refuses_a_foreign_database_in_one_line(fake_load, tmp_path):
    path = tmp_path / "mine.sqlite"
    users_database(path).close()
    facts = write_facts_file(tmp_path / "facts.jsonl", tiny_facts()[:1])
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(cli.app, ["run", "--model", "tiny-llama", "--facts", str(facts), "--steps", "2",
                                         "--all-facts", "--out", str(path), *extra])
        assert result.exit_code == 1, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "not a kneuron atlas" in errors[0], result.stderr
        assert "Traceback" not in result.output
    assert dump(path) == {"t": [("precious",)]}


@pytest.mark.parametrize("statement", [
    "CREATE TABLE t (x TEXT)", "CREATE VIEW v AS SELECT id FROM facts",
    "CREATE TRIGGER tr AFTER INSERT ON results BEGIN SELECT 1; END", "CREATE INDEX mine ON facts (subject)"])
def test_an_atlas_with_another_programs_table_is_neither_deleted_nor_written(lm, tmp_path, statement):
    """An atlas that carries kneuron's application_id, into which another program added a table of its own:
    ``--overwrite`` deleted the whole file with that table (issue 27, item 1); also a view, a trigger, an index."""
    path = tmp_path / "mixed.sqlite"
    run(lm, tiny_facts()[:1], path, **RUN_ARGS)
    db = sqlite3.connect(path)
    db.execute(statement)
    if statement.startswith("CREATE TABLE"):
        db.execute("INSERT INTO t VALUES ('precious')")
    db.commit()
    db.close()
    assert files(tmp_path) == ["mixed.sqlite"]
    for overwrite in (False, True):
        with pytest.raises(KneuronError, match="is not a kneuron atlas .*another program added"):
            run(lm, tiny_facts()[:2], path, **RUN_ARGS, overwrite=overwrite)
    with pytest.raises(KneuronError, match="not a kneuron atlas"):
        Atlas.open(path, read_only=True)
    assert files(tmp_path) == ["mixed.sqlite"]  # nor left a -wal / -shm beside it (issue 27, item 7)
    before = dump(path)
    with pytest.raises(KneuronError, match="not a kneuron atlas"):
        run(lm, tiny_facts()[:2], path, **RUN_ARGS, overwrite=True)
    assert dump(path) == before


def test_the_cli_run_overwrite_keeps_an_atlas_with_another_programs_table(fake_load, tmp_path):
    path = tmp_path / "mixed.sqlite"
    run(tiny_model("llama"), tiny_facts()[:1], path, **RUN_ARGS)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute("INSERT INTO t VALUES ('precious')")
    db.commit()
    db.close()
    facts = write_facts_file(tmp_path / "facts.jsonl", tiny_facts()[:1])
    result = runner.invoke(cli.app, ["run", "--model", "tiny-llama", "--facts", str(facts), "--out", str(path),
                                     "--steps", "3", "--overwrite"], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "not a kneuron atlas" in result.output, result.output
    assert sqlite3.connect(path).execute("SELECT x FROM t").fetchall() == [("precious",)]


def test_an_atlas_s_own_objects_are_what_its_schema_makes():
    from kneuron.store import vocabulary
    from kneuron.store.files import OWN_OBJECTS
    from kneuron.store.schema import AGGREGATES, RESULTS_BY_FACT, SCHEMA

    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA + ";" + vocabulary.SCHEMA + ";" + RESULTS_BY_FACT + ";" + AGGREGATES)
    made: dict[str, set[str]] = {}
    for kind, name in db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"):
        made.setdefault(kind, set()).add(name)
    assert made == {kind: set(names) for kind, names in OWN_OBJECTS.items()}
