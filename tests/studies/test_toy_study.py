"""The registry's promise: a study defined and registered here, with no other file touched, is everywhere a
built-in study is: ``kneuron study list``, its own command with its own options, the atlas (rows, covered facts and
a ``params`` row per option), ``kneuron report`` and a fact's page in ``kneuron serve``.

CONTRIBUTING.md's recipe for a new study is this file's path.
"""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.store import Atlas
from kneuron.studies.base import Option, Study, StudyContext
from kneuron.studies.metrics import row
from kneuron.studies.registry import register_study, study_named, unregister_study

runner = CliRunner()


class NeuronCount(Study):
    """Counts each fact's knowledge neurons, times a scale: the smallest study there is."""

    name = "toy_neuron_count"
    title = "Toy: knowledge neurons per fact"
    group = "beyond"
    needs_model = False
    options = (Option("scale", float, 1.0, "Multiplies every count.", min=0.0),)

    def run(self, context: StudyContext) -> list[dict]:
        scale = context.options["scale"]
        return [row(self.name, "kn", fact.relation, fact.id, "neurons", scale * len(context.neurons[fact.id]))
                for fact in context.facts]


@pytest.fixture
def toy():
    register_study(NeuronCount)
    yield study_named("toy_neuron_count")
    unregister_study("toy_neuron_count")


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


def test_a_registered_study_is_everywhere(toy, tmp_path):
    from serve.conftest import make_atlas

    path = make_atlas(tmp_path / "toy.sqlite")

    listed = invoke("study", "list")
    assert listed.exit_code == 0 and "toy_neuron_count" in listed.stdout and "--scale FLOAT=1.0" in listed.stdout

    assert invoke("study", "toy_neuron_count", "--run", str(path), "--scale", "-1").exit_code != 0  # its bounds
    result = invoke("study", "toy_neuron_count", "--run", str(path), "--scale", "2")
    assert result.exit_code == 0, result.output
    assert "neurons (kn)" in result.stdout and ", n = 10" in result.stdout  # the default summary line

    with Atlas.open(path, read_only=True) as atlas:
        facts = atlas.facts()
        neurons = atlas.all_refined()
        stored = atlas.results("toy_neuron_count")
        coverage = atlas.coverage()["toy_neuron_count"]
        aggregates = atlas.aggregates("toy_neuron_count")
        assert coverage == atlas.done_coverage()
    counts = {r["fact_id"]: r["value"] for r in stored if r["variant"] == "kn"}
    assert counts == {f.id: 2.0 * len(neurons.get(f.id, [])) for f in facts}
    assert [(r["metric"], r["value"]) for r in stored if r["variant"] == "params"] == [("scale", 2.0)]
    # the mean over facts is stored with its n and interval, overall and per relation (what the summary showed)
    from kneuron.studies.intervals import find, format_interval, interval_of

    overall = find(aggregates, "kn", "neurons")
    assert overall == interval_of([counts[f.id] for f in facts if f.id in counts])
    assert format_interval(overall) in result.stdout
    for relation in {f.relation for f in facts}:
        assert find(aggregates, "kn", "neurons", relation) == interval_of(
            [counts[f.id] for f in facts if f.id in counts and f.relation == relation])

    report = tmp_path / "toy.html"
    assert invoke("report", "--run", str(path), "--out", str(report)).exit_code == 0
    page = report.read_text(encoding="utf-8")
    section = page[page.index('<h2 id="study-toy_neuron_count">'):]
    mean = sum(counts.values()) / len(counts)
    assert "Toy: knowledge neurons per fact" in section and f"{mean:.4g}" in section

    from fastapi.testclient import TestClient

    from kneuron.serve.app import create_app

    served = tmp_path / "served.sqlite"
    shutil.copy(path, served)
    with TestClient(create_app(served), base_url="http://localhost") as client:
        fact = facts[0]
        data = client.get(f"/api/fact/{fact.id}").json()
        panel = next(s for s in data["results"] if s["study"] == "toy_neuron_count")
        assert [r["value"] for r in panel["rows"] if r["metric"] == "neurons"] == [counts[fact.id]]
        assert 'id="study-toy_neuron_count"' in client.get(f"/fact/{fact.id}").text


def test_names_and_options_are_checked_when_registering(toy):
    class Clash(Study):
        name = "layers"

    class Twice(Study):
        name = "toy_twice"
        options = (Option("a", int, 0, "a", flag="--x"), Option("b", int, 0, "b", flag="--x"))

    from kneuron.errors import StudyError

    for bad in (Clash, Twice):
        with pytest.raises(StudyError):
            register_study(bad)
    assert study_named("layers").group == "paper"


class _SeenFacts(Study):
    """Stores how many facts its context's cache gave it, under a key both toy studies use."""

    group = "beyond"
    needs_model = False

    def run(self, context: StudyContext) -> list[dict]:
        seen = context.cached("toy_fact_ids", lambda: [f.id for f in context.facts])
        return [row(self.name, "toy", "", "", "facts_seen", float(len(seen)))]


class SeenFirst(_SeenFacts):
    name = "toy_seen_first"


class SeenSecond(_SeenFacts):
    """Before its snapshot (in ``prepare``), a run adds a fact to the atlas, as a run still writing it would."""

    name = "toy_seen_second"
    reads = ("toy_seen_first",)
    grow: tuple = ()

    def prepare(self, atlas, options, shared) -> None:
        if self.grow:
            self.grow[0]()


def test_a_study_never_sees_an_earlier_snapshots_cached_inputs(tmp_path):
    """A study's cache belongs to its snapshot: a fact added between two studies of one command is seen by the
    second, also under a cache key the runner does not know."""
    from kneuron.store import run
    from kneuron.store.study_runs import run_studies_on_atlas
    from store.helpers import tiny_facts
    from tiny_models import tiny_lm

    lm, facts, path = tiny_lm("llama"), tiny_facts(), tmp_path / "growing.sqlite"
    settings = {"steps": 2, "known_only": False, "progress": False, "share": 0.3}
    run(lm, facts[:4], path, **settings)
    SeenSecond.grow = (lambda: run(lm, facts[:5], path, **settings),)
    register_study(SeenFirst)
    register_study(SeenSecond)
    try:
        results = run_studies_on_atlas(path, ["toy_seen_first", "toy_seen_second"])
    finally:
        unregister_study("toy_seen_first")
        unregister_study("toy_seen_second")
    seen = {r.study.name: [row["value"] for row in r.output.rows if row["metric"] == "facts_seen"] for r in results}
    assert seen == {"toy_seen_first": [4.0], "toy_seen_second": [5.0]}
