"""Readers of a live atlas read one moment of it (issue #10, item 2): a snapshot does not see facts committed
after it began, and every command (atlas, export, study, report, run's summary) reads inside one snapshot, so
its tables agree with each other while a run writes."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.store import Atlas, run
from kneuron.store import atlas as atlas_module
from store.helpers import RUN_ARGS, copy_fact, tiny_facts
from tiny_models import tiny_lm

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """``full``: all ten tiny facts done; ``start``: the same run stopped after two (same model and parameters,
    so full's rows of the other facts are what the run would write next)."""
    folder = tmp_path_factory.mktemp("snapshot")
    lm = tiny_lm("llama")  # the model `--model tiny-llama` loads (see the fake_load fixture)
    full, start = folder / "full.sqlite", folder / "start.sqlite"
    run(lm, tiny_facts(), full, **RUN_ARGS)
    run(lm, tiny_facts()[:2], start, **RUN_ARGS)
    return full, start


@pytest.fixture
def live(made, tmp_path):
    import shutil

    full, start = made
    path = tmp_path / "live.sqlite"
    shutil.copy(start, path)
    return full, path


def reads(atlas: Atlas) -> dict:
    return {
        "facts": [f.id for f in atlas.facts()], "all": atlas.fact_rows(None), "refined": atlas.all_refined(),
        "counts": atlas.status_counts(), "prompts": atlas.prompt_rows(), "layers": atlas.layer_counts(),
        "top": atlas.top_neurons(5), "relation": atlas.relation_neurons("capital"),
        "generic": atlas.generic_neurons(False), "neurons": atlas.query("SELECT * FROM neurons"),
        "done": atlas.done_coverage(),
    }


def test_a_snapshot_does_not_see_facts_committed_after_it_began(live):
    full, path = live
    with Atlas.open(path, read_only=True) as atlas:
        with atlas.snapshot():
            before = reads(atlas)
            for fact in tiny_facts()[2:5]:
                copy_fact(full, path, fact.id)  # another connection commits three more facts
            assert reads(atlas) == before
            assert len(before["facts"]) == 2 and set(before["refined"]) == set(before["facts"])
        after = reads(atlas)
    assert len(after["facts"]) == 5 and after["facts"][:2] == before["facts"]


def test_writing_inside_a_snapshot_is_refused(live):
    from kneuron.errors import KneuronError

    with Atlas.open(live[1]) as atlas, atlas.snapshot(), pytest.raises(KneuronError, match="inside a snapshot"):
        atlas.write_results("s", [{"variant": "v", "metric": "m", "value": 1.0}])


class Injecting:
    """Wraps an atlas's connection: after each statement the command runs, another writer commits one more fact."""

    def __init__(self, db, full, path, pool):
        self._db, self._full, self._path, self._pool = db, full, path, pool

    def execute(self, *args, **kwargs):
        cursor = self._db.execute(*args, **kwargs)
        if self._pool:
            copy_fact(self._full, self._path, self._pool.pop(0))
        return cursor

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.fixture
def injecting(live, monkeypatch):
    """Every Atlas.open of the live atlas gets an injecting connection; returns (full, path, pool)."""
    full, path = live
    pool = [fact.id for fact in tiny_facts()[2:]]
    real = Atlas.open.__func__

    def open_(cls, where, read_only=False):
        atlas = real(cls, where, read_only)
        atlas._db = Injecting(atlas._db, full, path, pool)
        return atlas

    monkeypatch.setattr(Atlas, "open", classmethod(open_))
    return full, path, pool


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("extra", [[], ["--relation", "capital"]])
def test_the_atlas_command_reads_one_moment(injecting, extra):
    _, path, pool = injecting
    result = invoke("atlas", "--run", path, *extra)
    assert result.exit_code == 0, result.output
    assert len(pool) < 8  # facts were committed while it read
    section = result.stdout.split("\nFacts\n")[1].split("\nKnowledge neurons per layer")[0]
    done = {cells[0].strip(): int(cells[1]) for cells in (line.split("│") for line in section.splitlines()
                                                           if "│" in line)}
    if not extra:
        assert done["all"] == sum(v for k, v in done.items() if k != "all")
    shown = done["all" if not extra else "capital"]
    per_layer = result.stdout.split("Knowledge neurons per layer")[1].split("Top neurons")[0]
    assert per_layer.count("│") > 0
    assert 2 <= shown < 10 - len(pool)  # one moment: not the facts committed after the command began


def test_export_writes_tables_of_one_moment(injecting, tmp_path):
    _, path, pool = injecting
    target = tmp_path / "out" / "x.csv"
    result = invoke("export", "--run", path, "--to", target)
    assert result.exit_code == 0, result.output
    assert len(pool) < 8
    facts = pd.read_csv(target.with_name("x.facts.csv"))
    done = set(facts[facts.status == "done"].id)
    neurons, prompts = pd.read_csv(target), pd.read_csv(target.with_name("x.prompts.csv"))
    assert set(neurons.fact_id) == done == set(prompts.fact_id)
    assert len(prompts) == 3 * len(done) and len(facts) == len(done)


def test_study_and_report_record_and_check_the_facts_they_covered(injecting, fake_load):
    _, path, pool = injecting
    result = invoke("study", "layers", "--run", path)
    assert result.exit_code == 0, result.output
    studied = int(result.stdout.split("Studies of ")[1].split()[0])
    with atlas_module.Atlas.open(path, read_only=True) as atlas:
        ids = [f.id for f in atlas.facts()]
        covered = atlas.coverage()["layers"]
    assert studied < len(ids)  # facts were committed while the study ran
    assert covered == {"facts": studied, "digest": atlas_module.fact_digest(ids[:studied])}
    result = invoke("report", "--run", path)
    assert result.exit_code == 0, result.output
    html = path.with_suffix(".html").read_text(encoding="utf-8")
    with atlas_module.Atlas.open(path, read_only=True) as atlas:
        done = len(atlas.facts())
    line = result.stdout.strip().splitlines()[-1]
    seen = int(line.split("facts=")[1].split()[0])
    assert studied < seen <= done  # the report's own moment, after the study's
    warning = f"the atlas has {seen} done facts, but its studies covered other facts (layers {studied})"
    assert warning in result.stderr and warning in html and 'class="warn stale"' in html


def test_a_report_of_current_studies_has_no_warning(live, fake_load):
    _, path = live
    assert invoke("study", "layers", "--run", path).exit_code == 0
    result = invoke("report", "--run", path)
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert "Not current" not in path.with_suffix(".html").read_text(encoding="utf-8")
    with Atlas.open(path) as atlas:  # results written without their facts (an older kneuron, the Python API)
        atlas.write_results("layers", atlas.results("layers"))
    result = invoke("report", "--run", path)
    assert "which facts layers covered was not recorded" in result.stderr


def test_readers_stay_consistent_while_a_writer_commits(live):
    """A writer thread commits 60 facts; the reader reads until it has finished and checks every snapshot.
    Bounded: the writer is joined with a timeout; no sleep is used to order the threads."""
    full, path = live
    first, failures = threading.Event(), []

    def writer():
        try:
            for i in range(60):
                copy_fact(full, path, tiny_facts()[2 + i % 8].id, f"copy{i}:{tiny_facts()[2 + i % 8].id}")
                first.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            first.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert first.wait(timeout=30)
    snapshots = 0
    try:
        while thread.is_alive() or snapshots == 0:
            with Atlas.open(path, read_only=True) as atlas, atlas.snapshot():
                ids = [f.id for f in atlas.facts()]
                refined = atlas.all_refined()
                prompts = {row["fact_id"] for row in atlas.prompt_rows()}
                counts = atlas.status_counts()
                assert set(refined) == set(ids) == prompts
                assert sum(c["done"] for c in counts.values()) == len(ids)
                assert atlas.done_coverage()["facts"] == len(ids)
            snapshots += 1
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive() and not failures, failures
    with Atlas.open(path, read_only=True) as atlas:
        assert len(atlas.facts()) == 62
