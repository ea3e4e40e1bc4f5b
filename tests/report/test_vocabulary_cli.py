"""`kneuron study vocabulary`, `kneuron atlas --fact`, `kneuron find --vocab` and the report's "What the neurons
write" section, on atlases of the tiny Llama: what they print and store is what the library computes."""

from __future__ import annotations

import io
import json
import math
from html import escape

import pytest
from PIL import Image
from typer.testing import CliRunner

from kneuron import cli
from kneuron.attribution import find_knowledge_neurons
from kneuron.interventions.vocabulary import activation_signs, neuron_vocabulary, token_text
from kneuron.report import ReportData, render_report
from kneuron.report.vocabulary import rank_figure, vocabulary_section
from kneuron.store import Atlas
from kneuron.store.vocabulary import read_vocabulary
from kneuron.studies.intervals import find, format_interval
from kneuron.studies.vocabulary import vocabulary_study, vocabulary_summary
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "250"})


def squeeze(text: str) -> str:
    """The output without table rules, one space between words."""
    return " ".join(text.replace("│", " ").replace("┃", " ").split())


def test_study_vocabulary_stores_and_prints_what_the_library_computes(atlas_path, fake_load):
    result = invoke("study", "vocabulary", "--run", atlas_path, "--seed", "3")
    assert result.exit_code == 0, result.output
    out = squeeze(result.stdout)
    with Atlas.open(atlas_path, read_only=True) as atlas, atlas.snapshot():
        stored = atlas.results("vocabulary")
        facts, neurons = atlas.facts(), atlas.all_refined()
        tokens = read_vocabulary(atlas)
        coverage = atlas.coverage()["vocabulary"]
        aggregates = atlas.aggregates("vocabulary")
    direct = vocabulary_study(tiny_lm("llama"), facts, neurons, seed=3)
    assert [(r["variant"], r["fact_id"], r["metric"]) for r in stored] == \
        [(r["variant"], r["fact_id"], r["metric"]) for r in direct]
    assert [r["value"] for r in stored] == pytest.approx([r["value"] for r in direct], rel=1e-9)
    assert coverage["facts"] == len(facts)
    summary = vocabulary_summary(stored)
    with_neurons = sum(bool(v) for v in neurons.values())
    assert f"What the knowledge neurons write: {with_neurons} fact(s)" in out
    # each mean over facts is the stored aggregate: its interval, n and paired p against the random neurons
    kn, random = find(aggregates, "kn", "answer_top10"), find(aggregates, "random", "answer_top10")
    assert kn.n == random.n == summary["kn"]["answer_top10"][1] and kn.control == "random"
    assert (f"facts: answer among a neuron's 10 most promoted tokens {format_interval(kn, percent=True, signed=False)} "
            f"{format_interval(random, percent=True, signed=False)}") in out
    negative = find(aggregates, "kn_neuron", "negative")
    assert negative.control == "random_neuron" and format_interval(negative, percent=True, signed=False) in out
    value, n = summary["random"]["neuron_rank"]
    assert f"median answer rank over (fact, neuron) pairs {summary['kn']['neuron_rank'][0]:.0f} (median)" in out
    assert f"{value:.0f} (median), n = {n}" in out
    assert len(tokens) == sum(len(v) for v in neurons.values())
    first = tokens[0]
    assert f"{first['fact_id']} L{first['layer']}.N{first['neuron']}" in out
    assert " ".join(repr(text) for _, text, _ in first["promoted"][:6]) in out


def test_atlas_fact_shows_what_its_neurons_write(atlas_path, fake_load):
    before = invoke("atlas", "--run", atlas_path, "--fact", "capital:France")
    assert before.exit_code == 0, before.output
    assert "kneuron study vocabulary --run" in squeeze(before.stdout)
    assert invoke("study", "vocabulary", "--run", atlas_path).exit_code == 0
    after = invoke("atlas", "--run", atlas_path, "--fact", "capital:France")
    assert after.exit_code == 0, after.output
    out = squeeze(after.stdout)
    with Atlas.open(atlas_path, read_only=True) as atlas, atlas.snapshot():
        rows = read_vocabulary(atlas, "capital:France")
        kn = atlas.knowledge_neurons("capital:France")
    assert rows and [(r["layer"], r["neuron"]) for r in rows] == kn.keys
    assert "What its knowledge neurons write" in out and f"answer token {rows[0]['answer_token']!r}" in out
    assert rows[0]["answer_token"] == "Paris"
    for entry in rows:
        line = (f"L{entry['layer']}.N{entry['neuron']} {entry['activation']:+.3g} {entry['answer_rank']} "
                + " ".join(repr(text) for _, text, _ in entry["promoted"][:8]))
        assert line in out, line
    assert "not the fact's knowledge neurons now" not in out


def test_find_shows_the_promoted_tokens(fake_load):
    prompts = ["The capital of France is", "The capital city of France is", "France has its capital at"]
    args = ["find", "--model", "tiny-llama", "--answer", "Paris", "--steps", "4", "--share", "0.5", "--vocab", "3"]
    for prompt in prompts:
        args += ["--prompt", prompt]
    payload = json.loads(invoke(*args, "--json").stdout)
    lm = fake_load["tiny-llama"]
    kn = find_knowledge_neurons(lm, prompts, "Paris", steps=4, share=0.5)
    assert kn.neurons
    means = [sum(float(s.activations[n.layer, n.index]) for s in kn.scores) / len(kn.scores) for n in kn.neurons]
    paris = int(lm.tokenizer.convert_tokens_to_ids("Paris"))
    expected = neuron_vocabulary(lm, kn.keys, activation_signs(means), top=3, answer_id=paris)
    assert list(payload["vocabulary"]) == [str(v) for v in expected]
    for v in expected:
        entry = payload["vocabulary"][str(v)]
        assert entry["sign"] == v.sign and entry["answer_rank"] == v.answer_rank
        assert [t for t, _, _ in entry["promoted"]] == [t for t, _ in v.promoted]
        assert [text for _, text, _ in entry["suppressed"]] == [token_text(lm, t) for t, _ in v.suppressed]
    table = invoke(*args)
    assert table.exit_code == 0, table.output
    out = squeeze(table.stdout)
    assert "promotes most (value slot × activation sign)" in out
    for v in expected:
        cell = " ".join(repr(token_text(lm, t)) for t, _ in v.promoted) + f" (answer rank {v.answer_rank})"
        assert cell in out, cell
    plain = invoke(*args[:-2], "--vocab", "0", "--json")
    assert "vocabulary" not in json.loads(plain.stdout)


def test_find_says_why_albert_has_no_projection(fake_load):
    result = invoke("find", "--model", "tiny-albert", "--answer", "Paris", "--steps", "3", "--share", "0.3",
                    "--prompt", "The capital of France is [Y].", "--prompt", "France's capital city is [Y].")
    assert result.exit_code == 0, result.output
    assert "no vocabulary projection" in result.stdout and "narrower than the hidden states" in squeeze(result.stdout)


def test_report_section(atlas_path, fake_load):
    assert "kneuron study vocabulary --run" in render_report(ReportData.from_atlas(atlas_path))
    assert invoke("study", "vocabulary", "--run", atlas_path).exit_code == 0
    data = ReportData.from_atlas(atlas_path)
    html = render_report(data)
    rows = data.rows("vocabulary")
    summary = vocabulary_summary(rows)
    assert "<h2>What the neurons write</h2>" in html
    assert "a value slot projected onto the vocabulary (unembedding × slot) shows which tokens a neuron" in html
    for variant in ("kn", "random"):  # the stored intervals, n and paired p; the medians as medians
        stored = data.interval("vocabulary", variant, "answer_top10")
        assert stored.n and f"<td class=\"\">{escape(format_interval(stored, percent=True, signed=False))}</td>" in html
        value, n = summary[variant]["neuron_rank"]
        assert f"{value:.0f} (median), n = {n}" in html
    assert "p = " in html and "no interval stored" not in html
    first = data.vocabulary[0]
    assert f"L{first['layer']}.N{first['neuron']}" in html
    assert html.count("<code>&#x27;") >= len(first["promoted"])  # the tokens, quoted
    assert Image.open(io.BytesIO(rank_figure(rows))).format == "PNG"
    assert rank_figure([]) is None
    assert "Only" in vocabulary_section(rows, data.vocabulary, {"facts": 8}, 8)  # 8 facts: said to be few
    assert "Not run" in vocabulary_section([], source="x.sqlite")
    assert not math.isnan(summary["kn"]["neurons"][0])
