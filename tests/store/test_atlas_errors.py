"""Bad input around the atlas: another model or other parameters, a locked or read-only file, files that are not
atlases, and overwrite."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess

import pytest

from kneuron.errors import KneuronError
from kneuron.facts import Fact
from kneuron.store import Atlas, run
from kneuron.store import atlas as atlas_module
from kneuron.store import connection as connection_module
from store.helpers import RUN_ARGS, dump, tiny_facts, tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture
def atlas_path(lm, tmp_path):
    path = tmp_path / "run.sqlite"
    run(lm, tiny_facts()[:2], path, **RUN_ARGS)
    return path


def test_another_model_is_refused_with_how_to_start_a_new_atlas(atlas_path):
    before = dump(atlas_path)
    other = tiny_model("llama", seed=1)
    with pytest.raises(KneuronError) as error:
        run(other, tiny_facts()[:2], atlas_path, **RUN_ARGS)
    message = str(error.value)
    assert "another model or other parameters" in message and "fingerprint" in message
    assert "--out" in message and "--overwrite" in message
    assert dump(atlas_path) == before


def test_another_shape_of_model_is_refused(atlas_path):
    with pytest.raises(KneuronError, match="n_neurons: atlas 24, this run 32"):
        run(tiny_model("llama", neurons=32), tiny_facts()[:2], atlas_path, **RUN_ARGS)


@pytest.mark.parametrize(("change", "named"), [
    ({"steps": 7}, "steps: atlas 6, this run 7"),
    ({"threshold": 0.3}, "threshold"),
    ({"share": 0.5}, "share: atlas 'adaptive', this run 0.5"),
    ({"objective": "logprob"}, "objective"),
    ({"alphas": "midpoint"}, "alphas"),
    ({"known_only": True}, "known_only"),
])
def test_other_parameters_are_refused(lm, atlas_path, change, named):
    before = dump(atlas_path)
    with pytest.raises(KneuronError, match="--overwrite") as error:
        run(lm, tiny_facts()[:2], atlas_path, **{**RUN_ARGS, **change})
    assert named in str(error.value)
    assert dump(atlas_path) == before


def test_overwrite_starts_a_new_atlas(lm, atlas_path):
    summary = run(lm, tiny_facts()[:1], atlas_path, **{**RUN_ARGS, "steps": 7}, overwrite=True)
    assert summary.computed == 1
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert atlas.meta["params"]["steps"] == 7 and len(atlas.facts()) == 1


def test_a_fact_with_other_content_under_the_same_id_is_refused(lm, atlas_path):
    changed = Fact("France", "capital", "Berlin", tiny_facts()[0].templates)
    with pytest.raises(KneuronError, match="differs from the one given.*--overwrite"):
        run(lm, [changed], atlas_path, **RUN_ARGS)


def test_more_facts_extend_the_atlas(lm, atlas_path):
    summary = run(lm, tiny_facts()[:4], atlas_path, **RUN_ARGS)
    assert (summary.computed, summary.already_done) == (2, 2)


def test_a_second_run_on_the_same_atlas_is_refused(lm, atlas_path):
    """Another run holds the run lock (flock, released when its process dies): refuse at once."""
    holder = Atlas.for_run(atlas_path, atlas_module.model_identity(lm), Atlas.open(atlas_path).params)
    try:
        with pytest.raises(KneuronError, match="locked by another writer.*another kneuron run"):
            run(lm, tiny_facts()[:3], atlas_path, **RUN_ARGS)
    finally:
        holder.close()
    assert run(lm, tiny_facts()[:3], atlas_path, **RUN_ARGS).computed == 1


def test_a_write_transaction_of_another_program_gives_a_clear_error(lm, atlas_path, monkeypatch):
    monkeypatch.setattr(connection_module, "BUSY_TIMEOUT", 0.2)
    other = sqlite3.connect(atlas_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(KneuronError, match="locked by another writer"):
            run(lm, tiny_facts()[:3], atlas_path, **RUN_ARGS)
        with Atlas.open(atlas_path) as atlas, pytest.raises(KneuronError, match="locked"):
            atlas.write_results("s", [{"variant": "v", "metric": "m", "value": 1.0}])
        with Atlas.open(atlas_path, read_only=True) as reader:  # readers are not blocked (WAL)
            assert len(reader.facts()) == 2
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert run(lm, tiny_facts()[:3], atlas_path, **RUN_ARGS).computed == 1


@contextlib.contextmanager
def read_only(path):
    """Make ``path`` read-only: chmod, and for root (whom chmod does not stop) the immutable attribute."""
    mode = path.stat().st_mode
    os.chmod(path, 0o444)
    immutable = False
    try:
        if os.access(path, os.W_OK):
            chattr = shutil.which("chattr")
            done = chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0
            if not done or os.access(path, os.W_OK):
                pytest.skip("cannot make a file read-only for this user (root without chattr +i)")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        os.chmod(path, mode)


def test_a_read_only_atlas_gives_a_clear_error(lm, atlas_path):
    before = dump(atlas_path)
    with read_only(atlas_path):
        with pytest.raises(KneuronError, match="read-only.*chmod u\\+w.*--out"):
            run(lm, tiny_facts()[:3], atlas_path, **RUN_ARGS)
        with pytest.raises(KneuronError, match="read-only"):
            Atlas.open(atlas_path)
        with Atlas.open(atlas_path, read_only=True) as atlas:  # still readable
            assert len(atlas.facts()) == 2
    assert dump(atlas_path) == before


def test_a_read_only_folder_gives_a_clear_error(lm, atlas_path):
    folder = atlas_path.parent
    with read_only(folder), pytest.raises(KneuronError, match="folder .* is not writable"):
        run(lm, tiny_facts()[:3], atlas_path, **RUN_ARGS)


def test_opening_what_is_not_an_atlas(tmp_path):
    with pytest.raises(KneuronError, match="No atlas at .*kneuron run --out"):
        Atlas.open(tmp_path / "missing.sqlite")
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database, just text " * 100)
    for read_only_ in (True, False):
        with pytest.raises(KneuronError, match="not a kneuron atlas"):
            Atlas.open(text, read_only=read_only_)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(KneuronError, match="not a kneuron atlas .*table t"):
        Atlas.open(other)


def test_overwrite_refuses_files_that_are_not_atlases(lm, tmp_path):
    text = tmp_path / "README.md"
    text.write_text("precious notes")
    with pytest.raises(KneuronError, match="not a kneuron atlas .*neither writes into nor deletes"):
        run(lm, tiny_facts()[:1], text, **RUN_ARGS, overwrite=True)
    assert text.read_text() == "precious notes"
    with pytest.raises(KneuronError, match="not a kneuron atlas"):
        run(lm, tiny_facts()[:1], text, **RUN_ARGS)
    assert text.read_text() == "precious notes"


def test_a_folder_is_not_an_atlas_path(lm, tmp_path):
    with pytest.raises(KneuronError, match="is a folder"):
        run(lm, tiny_facts()[:1], tmp_path, **RUN_ARGS)


def test_an_empty_file_is_not_taken_over(lm, tmp_path):
    """A run creates its atlas whole (under a temporary name, then linked), so an empty file is never one of its
    leftovers: it is the user's, and refused (see test_foreign_files.py)."""
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    with pytest.raises(KneuronError, match="an empty file; if a run killed at its start left it, delete it"):
        run(lm, tiny_facts()[:1], path, **RUN_ARGS)
    assert path.read_bytes() == b""


def _set_schema_version(path, version: int) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    db.commit()
    db.close()


def test_a_newer_schema_is_refused(atlas_path):
    _set_schema_version(atlas_path, 99)
    with pytest.raises(KneuronError, match="schema version 99"):
        Atlas.open(atlas_path, read_only=True)


def test_atlas_problems_are_atlas_errors_and_bad_input_is_input_error(lm, atlas_path, tmp_path):
    """The error classes of kneuron.errors: the atlas (missing, another model's, not done, newer) raises
    AtlasError; what the caller passed (a status, a result row, a run parameter) raises InputError (a ValueError)."""
    from kneuron.errors import AtlasError, InputError

    with pytest.raises(AtlasError, match="No atlas at"):
        Atlas.open(tmp_path / "none.sqlite")
    (tmp_path / "text.sqlite").write_text("not an atlas")
    with pytest.raises(AtlasError, match="is not a kneuron atlas"):
        Atlas.open(tmp_path / "text.sqlite")
    with pytest.raises(AtlasError, match="another model or other parameters"):
        run(tiny_model("llama", seed=1), tiny_facts()[:2], atlas_path, **RUN_ARGS)
    with Atlas.open(atlas_path, read_only=True) as atlas:
        with pytest.raises(AtlasError, match="No fact"):
            atlas.knowledge_neurons("capital:Atlantis")
        with pytest.raises(AtlasError, match="read-only"):
            atlas.write_results("s", [])
        with pytest.raises(InputError, match="Unknown fact status 'finished'"):
            atlas.fact_rows("finished")
        assert atlas.fact_row("capital:Atlantis") is None and atlas.has_done_facts()
    with Atlas.open(atlas_path) as atlas, pytest.raises(InputError, match="malformed"):
        atlas.write_results("s", [{"variant": "v"}])
    with pytest.raises(InputError, match="steps must be at least 1"):
        run(lm, tiny_facts()[:2], tmp_path / "other.sqlite", **{**RUN_ARGS, "steps": 0})
    _set_schema_version(atlas_path, 99)
    with pytest.raises(AtlasError, match="schema version 99"):
        Atlas.open(atlas_path, read_only=True)
