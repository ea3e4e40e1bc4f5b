"""`kneuron run`, `kneuron atlas` and `kneuron export` on tiny models (``--model tiny-<family>``, see conftest)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.store import Atlas
from store.helpers import dump, tiny_facts

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def facts_file(tmp_path):
    """The tiny facts in our JSONL schema: relation declarations, then facts."""
    path = tmp_path / "facts.jsonl"
    lines, declared = [], set()
    for fact in tiny_facts():
        if fact.relation not in declared:
            declared.add(fact.relation)
            lines.append(json.dumps({"relation": fact.relation, "templates": list(fact.templates)}))
        lines.append(json.dumps({"subject": fact.subject, "relation": fact.relation, "object": fact.object}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_args(facts_file, out, *extra):
    return ("run", "--model", "tiny-llama", "--facts", facts_file, "--steps", "4", "--all-facts", "--out", out,
            *extra)


@pytest.fixture
def atlas_path(fake_load, facts_file, tmp_path):
    out = tmp_path / "runs" / "tiny.sqlite"
    result = invoke(*run_args(facts_file, out))
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_an_atlas_and_a_second_run_does_nothing(fake_load, facts_file, atlas_path):
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert len(atlas.facts()) == 10 and atlas.meta["params"]["steps"] == 4
        assert atlas.meta["params"]["known_only"] is False
    before = dump(atlas_path)
    result = invoke(*run_args(facts_file, atlas_path))
    assert result.exit_code == 0, result.output
    assert f"atlas={atlas_path} facts=10 computed=0 already_done=10 dropped=0" in result.stdout
    assert "0 to compute, 10 already done" in result.stderr
    assert dump(atlas_path) == before


def test_run_output_and_progress(fake_load, facts_file, tmp_path):
    out = tmp_path / "p.sqlite"
    result = invoke(*run_args(facts_file, out, "--relations", "capital,continent", "--per-relation", "1"))
    assert result.exit_code == 0, result.output
    assert f"atlas={out} facts=2 computed=2 already_done=0 dropped=0" in result.stdout
    assert "2/2" in result.stderr and "facts" in result.stderr and "ETA" in result.stderr
    with Atlas.open(out, read_only=True) as atlas:
        assert [f.id for f in atlas.facts()] == ["capital:France", "continent:Egypt"]


def test_known_filter_says_how_many_it_dropped(fake_load, facts_file, tmp_path):
    out = tmp_path / "known.sqlite"
    result = invoke("run", "--model", "tiny-llama", "--facts", facts_file, "--steps", "2", "--top", "1",
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert "dropped 10 facts the model does not know (--all-facts keeps them): capital 5, language 3, " \
           "continent 2" in result.stderr
    assert "computed=0" in result.stdout and "dropped=10" in result.stdout


def test_malformed_facts_file_names_the_line_and_writes_nothing(fake_load, facts_file, atlas_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = facts_file.read_text().splitlines()
    lines.insert(3, '{"subject": "Spain", "relation": "capital", "object": ')
    bad.write_text("\n".join(lines) + "\n")
    fresh = tmp_path / "fresh.sqlite"
    result = invoke(*run_args(bad, fresh))
    assert result.exit_code == 1
    assert f"{bad}:4" in result.stderr and "Traceback" not in result.output
    assert not fresh.exists()
    before = dump(atlas_path)
    result = invoke(*run_args(bad, atlas_path))
    assert result.exit_code == 1 and f"{bad}:4" in result.stderr
    assert dump(atlas_path) == before


def test_template_without_placeholders_is_refused_before_writing(fake_load, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"relation": "capital", "templates": ["The capital of [X] is Paris."]}) + "\n"
                   + json.dumps({"subject": "France", "relation": "capital", "object": "Paris"}) + "\n")
    result = invoke(*run_args(bad, tmp_path / "x.sqlite"))
    assert result.exit_code == 1 and "[Y]" in result.stderr
    assert not (tmp_path / "x.sqlite").exists()


def test_another_model_or_other_parameters_are_refused(fake_load, facts_file, atlas_path):
    result = invoke("run", "--model", "tiny-gpt2", "--facts", facts_file, "--steps", "4", "--all-facts",
                    "--out", atlas_path)
    assert result.exit_code == 1
    assert "another model or other parameters" in result.stderr
    assert "--out" in result.stderr and "--overwrite" in result.stderr and "Traceback" not in result.output
    result = invoke(*run_args(facts_file, atlas_path, "--steps", "5"))
    assert result.exit_code == 1 and "steps: atlas 4, this run 5" in result.stderr
    result = invoke(*run_args(facts_file, atlas_path, "--steps", "5", "--relations", "language", "--overwrite"))
    assert result.exit_code == 0, result.output
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert atlas.meta["params"]["steps"] == 5 and len(atlas.facts()) == 3


def test_unknown_relation(fake_load, facts_file, tmp_path):
    result = invoke(*run_args(facts_file, tmp_path / "x.sqlite", "--relations", "capital,currency"))
    assert result.exit_code == 1
    assert "No facts of relation 'currency'" in result.stderr and "capital, continent, language" in result.stderr


def test_atlas_summary(atlas_path):
    result = invoke("atlas", "--run", atlas_path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("tiny-llama", "2 layers x 32 neurons", "steps=4", "Facts", "capital", "language", "continent",
                 "Knowledge neurons per layer", "Top neurons", "all"):
        assert text in out, text
    with Atlas.open(atlas_path, read_only=True) as atlas:
        best, facts = atlas.top_neurons(1)[0]
        generic = atlas.generic_neurons()
    assert str(best) in out
    if generic:
        assert "Generic neurons" in out and str(generic[0]) in out
    result = invoke("atlas", "--run", atlas_path, "--relation", "language")
    assert result.exit_code == 0 and "language" in result.stdout and "continent" not in result.stdout


def test_atlas_neurons_per_fact_carry_n_and_the_bootstrap_interval(atlas_path):
    from kneuron.studies.intervals import bootstrap_interval

    with Atlas.open(atlas_path, read_only=True) as atlas:
        refined = atlas.all_refined()
        by_relation = {r: [len(refined[f.id]) for f in atlas.facts(relation=r)] for r in atlas.relations()}
    for env in ({"COLUMNS": "80"}, {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}):  # piped, terminal
        out = runner.invoke(cli.app, ["atlas", "--run", str(atlas_path)], env=env).stdout
        assert "TTY_COMPATIBLE" not in env or max(len(line) for line in out.splitlines() if "n = " in line) <= 80
        for relation, counts in [*by_relation.items(), ("all", [c for v in by_relation.values() for c in v])]:
            lo, hi = bootstrap_interval(counts)
            shown = f"{sum(counts) / len(counts):.3f} [{lo:.3f}, {hi:.3f}], n = {len(counts)}".replace("-", "−")
            assert shown in out, (relation, shown, out)
    result = invoke("atlas", "--run", atlas_path, "--relation", "currency")
    assert result.exit_code == 1 and "No relation 'currency'" in result.stderr


def test_atlas_top_neurons_mean_scores_carry_n_and_the_bootstrap_interval(atlas_path):
    from kneuron.studies.intervals import bootstrap_interval

    with Atlas.open(atlas_path, read_only=True) as atlas:
        top = atlas.top_neurons(10)
        per_fact = {}
        for fact in atlas.facts():  # the slow reading: each fact's refined scores, in run order
            for neuron in atlas.knowledge_neurons(fact.id).neurons:
                per_fact.setdefault(neuron.key, []).append(neuron.score)
    out = runner.invoke(cli.app, ["atlas", "--run", str(atlas_path)], env={"COLUMNS": "200"}).stdout
    assert "mean score [95%], n" in out
    for neuron, facts in top:
        values = per_fact[neuron.key]
        lo, hi = bootstrap_interval(values)
        shown = f"{sum(values) / len(values):.4g} [{lo:.4g}, {hi:.4g}], n = {facts}".replace("-", "−")
        assert shown in out, (neuron, shown, out)


def test_atlas_one_fact(atlas_path):
    result = invoke("atlas", "--run", atlas_path, "--fact", "capital:Denmark")
    assert result.exit_code == 0, result.output
    with Atlas.open(atlas_path, read_only=True) as atlas:
        kn = atlas.knowledge_neurons("capital:Denmark")
        rows = atlas.prompt_rows("capital:Denmark")
    for text in ("Denmark -> Copenhagen", "Prompts", "Denmark's capital city is", "Knowledge neurons",
                 "Activation baseline", f"{rows[0]['probability']:.4g}", *(str(n) for n in kn.neurons)):
        assert text in result.stdout, text
    result = invoke("atlas", "--run", atlas_path, "--fact", "capital:Mars")
    assert result.exit_code == 1 and "No fact 'capital:Mars'" in result.stderr


def test_atlas_of_a_missing_file(tmp_path):
    result = invoke("atlas", "--run", tmp_path / "nothing.sqlite")
    assert result.exit_code == 1 and "No atlas at" in result.stderr and "kneuron run --out" in result.stderr


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export(atlas_path, tmp_path, suffix):
    with Atlas.open(atlas_path) as atlas:
        atlas.write_results("demo", [{"variant": "kn", "relation": "capital", "fact_id": "capital:France",
                                      "metric": "suppress", "value": -0.5}])
    target = tmp_path / "out" / f"tiny{suffix}"
    result = invoke("export", "--run", atlas_path, "--to", target)
    assert result.exit_code == 0, result.output
    read = pd.read_csv if suffix == ".csv" else pd.read_parquet
    names = ["neurons", "facts", "prompts", "generic", "results"]
    paths = [target] + [target.with_name(f"tiny.{name}{suffix}") for name in names[1:]]
    assert result.stdout.split() == [str(p) for p in paths]
    with Atlas.open(atlas_path, read_only=True) as atlas:
        neurons = read(paths[0])
        assert len(neurons) == atlas.query("SELECT count(*) AS n FROM neurons")[0]["n"]
        assert set(neurons["kind"]) == {"refined", "coarse", "baseline"}
        refined = neurons[(neurons.kind == "refined") & (neurons.fact_id == "capital:France")]
        assert list(refined["name"]) == [str(n) for n in atlas.knowledge_neurons("capital:France").neurons]
        assert list(refined["score"]) == [n.score for n in atlas.knowledge_neurons("capital:France").neurons]
        assert len(read(paths[1])) == 10 and len(read(paths[2])) == 30
        assert len(read(paths[3])) == atlas.query("SELECT count(*) AS n FROM generic")[0]["n"]
        results = read(paths[4])
        assert results.to_dict("records") == [{"study": "demo", "variant": "kn", "relation": "capital",
                                               "fact_id": "capital:France", "metric": "suppress", "value": -0.5}]
    assert not list(target.parent.glob(".*tmp"))


def test_export_to_another_format_is_refused(atlas_path, tmp_path):
    result = invoke("export", "--run", atlas_path, "--to", tmp_path / "out.xlsx")
    assert result.exit_code == 1 and ".csv or .parquet" in result.stderr


def test_ctrl_c_says_how_to_continue(fake_load, facts_file, tmp_path, monkeypatch):
    from kneuron.store import runs

    original = Atlas.store_fact
    calls = []

    def store_then_interrupt(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(runs.Atlas, "store_fact", store_then_interrupt)
    out = tmp_path / "stopped.sqlite"
    result = invoke(*run_args(facts_file, out))
    assert result.exit_code == 130
    assert f"interrupted: 2 facts are stored in {out}; run the same command again to continue" in result.stderr
    monkeypatch.setattr(runs.Atlas, "store_fact", original)
    result = invoke(*run_args(facts_file, out))
    assert result.exit_code == 0 and "computed=8 already_done=2" in result.stdout


def test_run_executor_chunk_and_keep_options(fake_load, facts_file, tmp_path):
    """--chunk-facts and --keep-scores reach the atlas's params; --executor local is today's run; a log (stderr
    not a terminal) gets plain progress lines; a bad executor or keep value is one error line."""
    out = tmp_path / "opts.sqlite"
    result = invoke(*run_args(facts_file, out, "--executor", "local", "--chunk-facts", "4", "--keep-scores",
                              "sparse"))
    assert result.exit_code == 0, result.output
    assert re.search(r"progress: 10/10 facts, (\d+)/\1 prompts \(100\.0%\)", result.stderr)
    assert "executor local" in result.stderr
    with Atlas.open(out, read_only=True) as atlas:
        assert atlas.params["chunk_facts"] == 4 and atlas.params["keep_scores"] == "sparse"
        assert atlas.params["sparse_threshold"] == 0.05
    bad = invoke(*run_args(facts_file, tmp_path / "b.sqlite", "--executor", "spark"))
    assert bad.exit_code == 1 and "error: Unknown executor 'spark': use local or ray." in bad.stderr
    bad = invoke(*run_args(facts_file, tmp_path / "c.sqlite", "--keep-scores", "half"))
    assert bad.exit_code == 1 and "Unknown keep_scores 'half'" in bad.stderr


def test_export_where_it_cannot_write_gives_one_line(atlas_path, tmp_path):
    from store.test_atlas_errors import read_only

    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "file").write_text("mine")
    with read_only(locked):
        for target, text in ((locked / "x.csv", "Cannot write"), (tmp_path / "file" / "x.csv", "Cannot write"),
                             (tmp_path / "folder.csv", "is a folder")):
            if text == "is a folder":
                target.mkdir()
            result = invoke("export", "--run", atlas_path, "--to", target)
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and text in errors[0], result.stderr
    assert list(locked.iterdir()) == [] and (tmp_path / "file").read_text() == "mine"


def test_export_includes_the_vocabulary_table_once_studied(atlas_path, tmp_path):
    from kneuron.store.vocabulary import read_vocabulary

    target = tmp_path / "before" / "tiny.csv"
    result = invoke("export", "--run", atlas_path, "--to", target)
    assert result.exit_code == 0 and not target.with_name("tiny.vocabulary.csv").exists()  # no table yet
    assert invoke("study", "vocabulary", "--run", atlas_path, "--model", "tiny-llama").exit_code == 0
    target = tmp_path / "after" / "tiny.csv"
    result = invoke("export", "--run", atlas_path, "--to", target)
    assert result.exit_code == 0, result.output
    written = target.with_name("tiny.vocabulary.csv")
    assert str(written) in result.stdout.split()
    exported = pd.read_csv(written, keep_default_na=False)
    with Atlas.open(atlas_path, read_only=True) as atlas:
        stored = read_vocabulary(atlas)
    assert len(exported) == len(stored) > 0
    assert list(zip(exported.fact_id, exported.layer, exported.neuron, exported.answer_rank, strict=True)) == \
        [(r["fact_id"], r["layer"], r["neuron"], r["answer_rank"]) for r in stored]
    assert list(exported.name) == [f"L{r['layer']}.N{r['neuron']}" for r in stored]
    aggregates = pd.read_csv(target.with_name("tiny.aggregates.csv"), keep_default_na=False)
    with Atlas.open(atlas_path, read_only=True) as atlas:
        stored_aggregates = atlas.aggregates()
    assert len(aggregates) == len(stored_aggregates) > 0
    assert list(aggregates.metric) == [row["metric"] for row in stored_aggregates]
