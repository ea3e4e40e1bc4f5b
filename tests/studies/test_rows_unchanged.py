"""Every study stores the same rows through the registry's runner as through the code paths before it.

The reference rows (``tests/fixtures/study_rows.json``, see :mod:`studies.reference_rows`) were stored by the
pre-registry commands on three fixed float64 atlases. Here the same atlases are made again and studied through
today's ``kneuron study`` commands; each study's rows must match the reference row by row (same order, same
variant, relation, fact and metric, values within 1e-9 relative). ``params`` rows may be more than before (the runner
records every numeric option), but each reference one is there with its value. Metrics a study added later
(:data:`ADDED`) are new rows beside the reference's: left out of the comparison, and required to be there.
"""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from kneuron import cli
from studies import reference_rows as ref

runner = CliRunner()


def invoke(*args: str) -> None:
    result = runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def studied(tmp_path_factory) -> dict[str, dict[str, list[list]]]:
    folder = tmp_path_factory.mktemp("reference_atlases")
    with ref.float64_models():
        paths = ref.build(folder)
        out = {}
        for name in ("llama", "bert"):
            path, model = str(paths[name]), f"tiny-{name}"
            invoke("study", "all", "--run", path, "--model", model)
            only = [] if name == "llama" else ["--only", "vocabulary,interactions,consistency"]
            invoke("study", "beyond", "--run", path, "--model", model, "--cap", "3", *only)
            invoke("study", "estimators", "--run", path, "--model", model)
            if name == "llama":
                invoke("study", "editing", "--run", path, "--model", model, "--erase", "capital", "--top", "3",
                       "--other", "2", "--other-erase", "3")
            out[name] = ref.stored(paths[name])
        invoke("study", "languages", "--run", str(paths["languages"]), "--model", "tiny-llama")
        out["languages"] = ref.stored(paths["languages"])
    return out


#: metrics that are wall-clock measurements (compared by presence only)
TIMED = ("seconds_per_prompt", "speedup")
#: metrics a study added after the reference was stored (issue 24: the estimators' specificity): new rows, left
#: out of the row-by-row comparison (the reference's rows must still be there, in order, with their values), and
#: required to be present
ADDED = {"estimators": ("suppress_other", "generic_fraction", "identical", "generic_neurons", "most_shared")}


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("atlas", list(ref.ATLASES))
def test_every_study_stores_the_reference_rows(studied, atlas):
    reference, now = ref.read_fixture()[atlas], studied[atlas]
    assert set(now) == set(reference)
    for study, old_rows in reference.items():
        added = ADDED.get(study, ())
        assert not any(r[3] in added for r in old_rows), (study, "an added metric is in the reference")
        new_rows = now[study]
        assert {r[3] for r in new_rows if r[3] in added} == set(added), study
        old_kept = [r for r in old_rows if r[0] != "params"]
        new_kept = [r for r in new_rows if r[0] != "params" and r[3] not in added]
        assert len(new_kept) == len(old_kept), study
        for old, new in zip(old_kept, new_kept, strict=True):
            assert old[:4] == new[:4], (study, old, new)
            assert old[3] in TIMED or _same(old[4], new[4]), (study, old, new)
        new_params = {(r[1], r[2], r[3]): r[4] for r in new_rows if r[0] == "params"}
        for r in old_rows:
            if r[0] == "params":
                assert (r[1], r[2], r[3]) in new_params and _same(r[4], new_params[r[1], r[2], r[3]]), (study, r)
