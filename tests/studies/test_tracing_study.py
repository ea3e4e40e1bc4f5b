"""The ``tracing`` study: its rows are the tracing engine's maps and restorations of each fact's first readable
prompt, its ROME-key rows rank the knowledge neurons as a by-hand ranking does, and it is everywhere a registered
study is (CLI, atlas, report section, the fact page's heatmaps)."""

from __future__ import annotations

import html as html_text
import math
import shutil
import zlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kneuron import cli
from kneuron.attribution import Neuron
from kneuron.facts import Fact, encode
from kneuron.facts.subject import subject_positions
from kneuron.interventions.tracing import Restoration, embedding_std, indirect_effects, prepare, trace
from kneuron.models.hooks import capture
from kneuron.store import Atlas, run
from kneuron.studies.metrics import row
from kneuron.studies.tracing import average_effects, fact_means, fact_traces, figure_value, tracing_study
from store.helpers import tiny_facts
from tiny_models import tiny_lm

runner = CliRunner()


def _by(rows, fact_id, variant):
    return {r["metric"]: r["value"] for r in rows if r["fact_id"] == fact_id and r["variant"] == variant}


def test_rows_are_the_engines_and_the_key_ranks_are_by_hand():
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    facts = [Fact("Stockholm Sweden", "capital", "Copenhagen", ("[Y] is the capital of [X].",
                                                                "The capital of [X] is [Y].")),
             Fact("France", "capital", "Paris", ("The capital of [X] is [Y].",))]
    neurons = {facts[0].id: [Neuron(2, 5, 1.0), Neuron(2, 9, 0.5), Neuron(1, 3, 0.2)], facts[1].id: []}
    rows, traced = tracing_study(lm, facts, neurons, samples=3, window=2, noise_scale=3.0, seed=4)
    assert traced == [f.id for f in facts]
    fact, kn = facts[0], neurons[facts[0].id]
    prompt = fact.prompts()[1]  # the first prompt reads "[Y]" before the subject: a causal model cannot trace it
    query = encode(lm, prompt, fact.object)
    subject = subject_positions(lm, prompt, fact.subject, query)
    noise = 3.0 * embedding_std(lm, [f.subject for f in facts])
    plan = prepare(lm, query, subject, noise=noise, samples=3, seed=zlib.crc32(f"4:{fact.id}".encode()))
    maps = trace(lm, query, subject, noise=noise, window=2, plan=plan)
    (traced_fact,) = [t for t in fact_traces(rows) if t.fact_id == fact.id]
    for kind, grid in maps.effects.items():
        np.testing.assert_allclose(traced_fact.maps[kind], grid, rtol=1e-9, atol=1e-15)
    assert traced_fact.tokens == maps.tokens and _by(rows, fact.id, "effect")["prompt"] == 1
    assert _by(rows, fact.id, "effect")["p_clean"] == pytest.approx(plan.p_clean, rel=1e-12)

    answer = _by(rows, fact.id, "answer")
    last = query.position
    single = indirect_effects(lm, plan, [Restoration("mlp", last, (layer,)) for layer in range(3)])
    joint = indirect_effects(lm, plan, [Restoration("mlp", last, (1, 2)), Restoration("mlp", last, (0, 1, 2)),
                                        Restoration.of_neurons(last, [n.key for n in kn])])
    np.testing.assert_allclose([answer[f"mlp1 L{layer}"] for layer in range(3)], single, rtol=1e-9, atol=1e-15)
    share = (single[1] + single[2]) / single.sum() if single.sum() > 0 else math.nan
    assert answer["kn_layers_share"] == pytest.approx(share, rel=1e-9, nan_ok=True)
    assert answer["kn_layers_sum"] == pytest.approx(single[1] + single[2], rel=1e-9, abs=1e-15)
    assert answer["all_layers_sum"] == pytest.approx(single.sum(), rel=1e-9, abs=1e-15)
    assert answer["joint_kn_layers"] == pytest.approx(joint[0], rel=1e-9, abs=1e-15)
    assert answer["kn_neurons"] == pytest.approx(joint[2], rel=1e-9, abs=1e-15)

    key = _by(rows, fact.id, "key")
    with capture(lm, positions=subject[-1]) as acts, torch.no_grad():
        lm.model(input_ids=query.input_ids[None])
    for n in kn:
        a = acts[n.layer][0, 0]
        rank = 1 + int((a.abs() > a[n.index].abs()).sum())  # ties never happen with random weights
        assert key[f"rank {n}"] == rank and key[f"activation {n}"] == pytest.approx(float(a[n.index]))
    best = max(kn, key=lambda n: abs(float(acts[n.layer][0, 0, n.index])))
    assert [m for m in key if m.startswith("weighed_most ")] == [f"weighed_most {best}"]
    assert not _by(rows, facts[1].id, "key") and _by(rows, facts[1].id, "peak")  # no neurons: traced, no key
    averages = average_effects(fact_traces(rows))
    assert averages[("mlp", "last")][1] == 2


def test_the_study_is_everywhere(tmp_path, fake_load):
    path = tmp_path / "tiny.sqlite"
    run(tiny_lm("llama"), tiny_facts(), path, steps=3, known_only=False, progress=False, share=0.3)
    result = runner.invoke(cli.app, ["study", "tracing", "--run", str(path), "--samples", "2", "--window", "1",
                                     "--facts", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Causal tracing of 3 facts" in result.stdout and "AIE mlp at subject last" in result.stdout
    with Atlas.open(path, read_only=True) as atlas:
        stored = atlas.results("tracing")
        facts = atlas.facts()
        aggregates = atlas.aggregates("tracing")
    assert {r["metric"]: r["value"] for r in stored if r["variant"] == "params"}["samples"] == 2
    # the summary's figures are the stored intervals: a mean, and a share as a ratio of means
    from kneuron.studies.intervals import find, format_interval

    total = find(aggregates, "effect", "total_effect")
    share = find(aggregates, "answer", "joint_share@ratio")
    assert total.n == 3 and format_interval(total) in result.stdout
    assert share.n and format_interval(share, percent=True, digits=0, signed=False) in result.stdout
    assert len(fact_traces(stored)) == 3

    report = tmp_path / "t.html"
    assert runner.invoke(cli.app, ["report", "--run", str(path), "--out", str(report)]).exit_code == 0
    page = report.read_text(encoding="utf-8")
    assert '<h2 id="study-tracing">Causal tracing against knowledge neurons</h2>' in page
    assert "data:image/png;base64" in page[page.index('id="study-tracing"'):]
    assert html_text.escape(format_interval(total)) in page[page.index('id="study-tracing"'):]

    from fastapi.testclient import TestClient

    from kneuron.serve.app import create_app

    served = tmp_path / "served.sqlite"
    shutil.copy(path, served)
    with TestClient(create_app(served), base_url="http://localhost") as client:
        panel = next(s for s in client.get(f"/api/fact/{facts[0].id}").json()["results"] if s["study"] == "tracing")
        assert [c["title"].split(": ")[1] for c in panel["charts"]] == [
            "residual stream (one layer) restored", "MLP output, windows of 1 layers restored",
            "attention output, windows of 1 layers restored"]
        assert not any(r["variant"].startswith("map:") for r in panel["table"])
        html = client.get(f"/fact/{facts[0].id}").text
        assert html.count('class="chart heatmap"') == 3


def test_shares_over_facts_are_ratios_of_means():
    """One fact with a tiny whole (0.001) and a part of 5 would make the mean of the per-fact ratios about 2500;
    the summary divides the mean part by the mean whole."""
    facts = {"a": (0.2, 0.4), "b": (0.3, 0.5), "c": (5.0, 0.001), "d": (0.1, math.nan)}
    rows = []
    for fact, (part, whole) in facts.items():
        rows += [row("tracing", "answer", "r", fact, "kn_neurons", part),
                 row("tracing", "answer", "r", fact, "joint_all_layers", whole),
                 row("tracing", "answer", "r", fact, "kn_neurons_share_of_all", part / whole)]
    value, n = figure_value(rows, "answer", "kn_neurons_share_of_all")
    assert n == 3 and value == pytest.approx((0.2 + 0.3 + 5.0) / (0.4 + 0.5 + 0.001))
    assert fact_means(rows, "answer", "kn_neurons_share_of_all")[0] > 1000  # what the summary used to show
    assert figure_value(rows, "answer", "kn_neurons")[0] == pytest.approx(5.6 / 4)  # not a share: the mean
    # the stored aggregate of the share is that ratio of means, with the bootstrap over the same 3 facts
    from kneuron.studies.intervals import bootstrap_interval
    from kneuron.studies.tracing import ratio_aggregates

    stored = next(a for a in ratio_aggregates(rows) if a["metric"] == "kn_neurons_share_of_all@ratio")
    assert stored["n"] == 3 and stored["mean"] == pytest.approx(value)
    assert (stored["lo"], stored["hi"]) == bootstrap_interval([0.2, 0.3, 5.0], [0.4, 0.5, 0.001])


def test_the_average_effect_profiles_are_stored_with_intervals_and_drawn_as_bands(monkeypatch):
    """Each layer of each average indirect-effect profile is stored as an aggregate over the facts it averages
    (the bootstrap of the per-fact profiles, by hand here), and the report's figure draws the stored bands
    (doctored, so that a recomputed band would differ)."""
    from matplotlib.axes import Axes

    from kneuron.report.tracing import tracing_figure, tracing_section
    from kneuron.studies.intervals import bootstrap_interval, find, format_interval
    from kneuron.studies.tracing import PROFILE, profile_aggregates, profile_metric

    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    facts = [Fact("Stockholm Sweden", "capital", "Copenhagen", ("The capital of [X] is [Y].",)),
             Fact("France", "capital", "Paris", ("The capital of [X] is [Y].",)),
             Fact("Norway", "capital", "Oslo", ("The capital of [X] is [Y].",))]
    rows, _ = tracing_study(lm, facts, {f.id: [] for f in facts}, samples=2, window=2, noise_scale=3.0, seed=4)
    traces = fact_traces(rows)
    stored = profile_aggregates(rows)
    averages = average_effects(traces)
    assert max(n for _, n in averages.values()) == 3  # a mean over several facts, so the bootstrap is seen
    assert averages and len(stored) == sum(len(profile) for profile, _ in averages.values())
    for (kind, group), (profile, n) in averages.items():
        for layer in range(len(profile)):
            values = [float(t.maps[kind][t.positions(group), layer].mean()) for t in traces if t.positions(group)]
            found = find(stored, PROFILE, profile_metric(kind, group, layer))
            assert found.n == n == len(values) and found.mean == pytest.approx(sum(values) / n, rel=1e-12)
            assert found.mean == pytest.approx(float(profile[layer]), rel=1e-12)
            assert (found.lo, found.hi) == pytest.approx(bootstrap_interval(values), rel=1e-12)
    doctored = [{**a, "lo": a["lo"] - 0.25, "hi": a["hi"] + 0.5} for a in stored]
    bands = []
    original = Axes.fill_between

    def record(self, x, low, high, **kwargs):
        bands.append((list(low), list(high)))
        return original(self, x, low, high, **kwargs)

    monkeypatch.setattr(Axes, "fill_between", record)
    assert tracing_figure(rows, doctored) is not None
    expected = [([find(doctored, PROFILE, profile_metric(kind, group, layer)).lo for layer in range(len(profile))],
                 [find(doctored, PROFILE, profile_metric(kind, group, layer)).hi for layer in range(len(profile))])
                for (kind, group), (profile, _) in averages.items()]
    assert len(bands) == len(expected)
    for (low, high), (want_low, want_high) in zip(bands, expected, strict=True):
        assert low == pytest.approx(want_low) and high == pytest.approx(want_high)
    bands.clear()
    assert tracing_figure(rows) is not None and not bands  # traced before the profiles were stored: lines only
    section = tracing_section(rows, 3, stored)
    (kind, group), (profile, _) = next(iter(averages.items()))
    peak = int(np.argmax(profile))
    text = format_interval(find(stored, PROFILE, profile_metric(kind, group, peak)))
    assert html_text.escape(f"L{peak}: {text}") in section
