"""`kneuron study beyond --run ATLAS`: the studies beyond the paper on one model load, each stored as its own
command stores it; `--only` picks some; bad names are refused in one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.errors import KneuronError
from kneuron.store import Atlas
from kneuron.studies.registry import names_of, running_order, studies_in

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


def _stored(path) -> dict[str, list[tuple]]:
    with Atlas.open(path, read_only=True) as atlas:
        return {study: [(r["variant"], r["relation"], r["fact_id"], r["metric"], r["value"])
                        for r in atlas.results(study)] for study in atlas.studies()}


def beyond_names(only):
    return [s.name for s in running_order(names_of(only, studies_in("beyond"), "--only"))]


def test_names_run_in_their_order_and_unknown_ones_are_refused():
    every = beyond_names(None)
    assert set(every) == {s.name for s in studies_in("beyond")}
    for study in studies_in("beyond"):  # each after the studies it reads
        assert all(every.index(read) < every.index(study.name) for read in study.reads if read in every)
    assert beyond_names("vocabulary, consistency") == beyond_names("consistency,vocabulary")  # running order
    assert beyond_names("robustness") == ["edit_robustness"]  # an alias
    for bad in ("vocab", "", "consistency,suppress-amplify"):
        with pytest.raises(KneuronError, match="choose among"):
            beyond_names(bad)


def test_beyond_stores_what_each_study_stores_alone(atlas_path, fake_load, tmp_path):
    alone = tmp_path / "alone.sqlite"
    alone.write_bytes(atlas_path.read_bytes())
    result = invoke("study", "beyond", "--run", str(atlas_path), "--model", "tiny-llama", "--cap", "3")
    assert result.exit_code == 0, result.output
    assert len(fake_load) == 1  # one model load for every study
    assert "study vocabulary" in result.stderr and "study consistency" in result.stderr
    assert "languages: skipped" in result.stderr  # the atlas has no fact in two languages
    together = _stored(atlas_path)
    assert sorted(together) == sorted(s.name for s in studies_in("beyond") if s.name != "languages")
    for name in together:
        extra = ["--cap", "3"] if name == "interactions" else []
        model = [] if name == "consistency" else ["--model", "tiny-llama"]
        assert invoke("study", name, "--run", str(alone), *model, *extra).exit_code == 0
    one_by_one = _stored(alone)
    assert sorted(together) == sorted(one_by_one)
    for study in together:
        assert [r[:4] for r in together[study]] == [r[:4] for r in one_by_one[study]]
        assert [r[4] for r in together[study]] == pytest.approx([r[4] for r in one_by_one[study]], nan_ok=True,
                                                                rel=1e-9)


def test_only_consistency_needs_no_model(atlas_path, fake_load):
    result = invoke("study", "beyond", "--run", str(atlas_path), "--only", "consistency")
    assert result.exit_code == 0, result.output
    assert not fake_load and _stored(atlas_path).keys() == {"consistency"}
    assert "no edit robustness rows yet: run `kneuron study robustness --run" in result.stdout


def test_bad_input_is_one_line(atlas_path, fake_load, tmp_path):
    result = invoke("study", "beyond", "--run", str(atlas_path), "--only", "everything")
    assert result.exit_code == 1 and "choose among" in result.output and "Traceback" not in result.output
    result = invoke("study", "beyond", "--run", str(tmp_path / "missing.sqlite"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not fake_load


def test_study_all_with_beyond_runs_them_on_the_same_model(atlas_path, fake_load, tmp_path):
    alone = tmp_path / "alone.sqlite"
    alone.write_bytes(atlas_path.read_bytes())
    result = invoke("study", "all", "--run", str(atlas_path), "--model", "tiny-llama",
                    "--beyond", "consistency,vocabulary")
    assert result.exit_code == 0, result.output
    assert len(fake_load) == 1  # one load for the paper's studies and the two beyond them
    assert "study vocabulary" in result.stderr
    for args in (("all", "--model", "tiny-llama"), ("beyond", "--only", "consistency,vocabulary", "--model",
                                                      "tiny-llama")):
        assert invoke("study", args[0], "--run", str(alone), *args[1:]).exit_code == 0
    together, apart = _stored(atlas_path), _stored(alone)
    assert sorted(together) == sorted(apart)
    assert {"suppress_amplify", "consistency", "vocabulary"} <= together.keys()
    for study in together:
        assert [r[:4] for r in together[study]] == [r[:4] for r in apart[study]]
        assert [r[4] for r in together[study]] == pytest.approx([r[4] for r in apart[study]], nan_ok=True, rel=1e-9)


def test_beyond_option_is_refused_in_one_line_before_anything_runs(atlas_path, fake_load):
    for args in (("layers", "--beyond", "consistency"), ("all", "--beyond", "everything")):
        result = invoke("study", *args, "--run", str(atlas_path), "--model", "tiny-llama")
        assert result.exit_code != 0 and "Traceback" not in result.output  # layers has no --beyond: a usage error
    assert not fake_load and not _stored(atlas_path)
