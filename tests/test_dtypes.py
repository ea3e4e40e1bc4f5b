"""Every dtype path on the CPU: bfloat16 tiny models of every family against float32, and float32 models under a
float64 default dtype (a tensor kneuron made without taking the model's dtype would change the numbers there).

CPU bfloat16 takes the same dtype paths CUDA bfloat16 does (the device paths are in benchmarks/bench_device.py).
Tolerances, with what was measured when they were set (all 28 families, 2 prompts, default settings):

* scores of every estimator: Pearson with float32 at least 0.995 per prompt (measured: 0.9996 at worst, phi3 gxa);
* the clean answer probability: within 5% relative (measured: 1.6% at worst, phi);
* an edit: the new answer's log-probability under the bf16 edit within 0.25 nats of float32's (measured: 0.14,
  olmo), and the undo restores every bf16 weight bit for bit;
* a run and the paper's studies: the run stores bfloat16 as the atlas's dtype, the refined neurons of each fact
  overlap float32's, and every study row is finite.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import kneuron
from kneuron import cli
from kneuron.attribution.estimators import estimator_named, estimator_names
from kneuron.errors import KneuronError
from kneuron.facts import answer_probability
from kneuron.interventions.update import update_fact
from kneuron.store import Atlas
from kneuron.store.study_runs import run_studies_on_atlas
from store.helpers import tiny_facts
from tiny_models import FAMILIES, tiny_lm

BAGS = {"causal": ["The capital of France is", "France's capital city is"],
        "mlm": ["The capital of France is [Y].", "France's capital city is [Y]."]}
EDITED = [(0, 3), (1, 5)]
PEARSON, PROBABILITY, EDIT_NATS = 0.995, 0.05, 0.25
#: the paper's studies (group "paper"), run on the bf16 atlas
PAPER_STUDIES = ["suppress_amplify", "generic", "layers", "discrimination"]
#: one family per block layout for the slower checks (a run and studies; the float64 default)
LAYOUTS = ("bert", "albert", "gpt2", "llama", "gemma2")


def attribute_all(lm) -> dict[str, list]:
    """Each registered estimator's scores of the bag (those that refuse the family are left out: the refusal is
    the same one-line error in every dtype, tested with the estimators)."""
    out = {}
    for name in estimator_names():
        try:
            out[name] = estimator_named(name).attribute(lm, BAGS[lm.kind], "Paris")
        except KneuronError:
            continue
    return out


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_estimators_and_edit_agree_with_float32(family):
    lm32, lm16 = tiny_lm(family), tiny_lm(family, dtype=torch.bfloat16)
    full, half = attribute_all(lm32), attribute_all(lm16)
    assert set(full) == set(half) and {"ig", "gxa"} <= set(full)
    for name, bag in full.items():
        for a, b in zip(bag, half[name], strict=True):
            assert b.scores.dtype == torch.float64 and torch.isfinite(b.scores).all(), name
            assert pearson(a.scores, b.scores) >= PEARSON, name
            assert abs(b.probability - a.probability) <= PROBABILITY * a.probability, name
            assert b.activations.dtype == torch.bfloat16  # the model's own values, kept as they were
    prompt = BAGS[lm32.kind][0]
    try:
        edits = [update_fact(lm, EDITED, "Paris", "Rome") for lm in (lm32, lm16)]
    except KneuronError:  # ALBERT's factorised embeddings have no answer vector to write (an EditError)
        assert family == "albert"
        return
    before = {k: v.clone() for k, v in lm16.model.state_dict().items()}
    logs = []
    for lm, edit in zip((lm32, lm16), edits, strict=True):
        with edit.applied(lm):
            logs.append(math.log(answer_probability(lm, prompt, "Rome").probability))
    assert abs(logs[0] - logs[1]) <= EDIT_NATS
    assert all(torch.equal(before[k], v) for k, v in lm16.model.state_dict().items())


@pytest.mark.parametrize("family", LAYOUTS)
def test_a_float64_default_dtype_changes_nothing(family):
    """torch.set_default_dtype(float64) with a float32 model: every estimator's scores, activations, probabilities
    and baselines are bit-identical to those under the float32 default, and an edit's effect too."""
    lm = tiny_lm(family)
    prompt = BAGS[lm.kind][0]

    def everything():
        scores = attribute_all(lm)
        edited = None
        if family != "albert":
            with update_fact(lm, EDITED, "Paris", "Rome").applied(lm):
                edited = answer_probability(lm, prompt, "Rome").probability
        return scores, edited

    usual = everything()
    torch.set_default_dtype(torch.float64)
    try:
        wide = everything()
    finally:
        torch.set_default_dtype(torch.float32)
    assert usual[1] == wide[1]
    for name, bag in usual[0].items():
        for a, b in zip(bag, wide[0][name], strict=True):
            assert torch.equal(a.scores, b.scores) and torch.equal(a.activations, b.activations), name
            assert a.activations.dtype == b.activations.dtype == torch.float32
            assert a.probability == b.probability and torch.equal(a.baseline.nan_to_num(), b.baseline.nan_to_num())


@pytest.mark.parametrize("family", ["llama", "bert", "gemma2"])
def test_kneuron_run_and_the_paper_studies_in_bfloat16(family, monkeypatch, tmp_path):
    """`kneuron run` of a bf16 model on four facts, then the paper's studies on its atlas, beside float32."""
    handed = {}

    def load(model=None, *, device="cpu", dtype=None, **_kwargs):
        handed[model] = lm = tiny_lm(family, dtype=torch.bfloat16 if model == "tiny-bf16" else torch.float32)
        return lm

    monkeypatch.setattr(kneuron.models, "load", load)
    facts = tmp_path / "facts.jsonl"
    chosen = tiny_facts()[:4]
    facts.write_text("\n".join([json.dumps({"relation": "capital", "templates": list(chosen[0].templates)})]
                               + [json.dumps({"subject": f.subject, "relation": f.relation, "object": f.object})
                                  for f in chosen]) + "\n")
    refined = {}
    for name in ("tiny-bf16", "tiny-f32"):
        out = tmp_path / f"{name}.sqlite"
        result = CliRunner().invoke(cli.app, ["run", "--model", name, "--facts", str(facts), "--steps", "4",
                                              "--all-facts", "--out", str(out)])
        assert result.exit_code == 0, result.output
        with Atlas.open(out, read_only=True) as atlas:
            assert atlas.meta["dtype"] == ("bfloat16" if name == "tiny-bf16" else "float32")
            refined[name] = {k: {(n.layer, n.index) for n in v} for k, v in atlas.all_refined().items()}
        rows = [row for study in run_studies_on_atlas(out, PAPER_STUDIES, lm=handed[name]) for row in study.rows]
        assert rows and all(math.isfinite(row["value"]) for row in rows if row["value"] is not None)
    assert refined["tiny-bf16"].keys() == refined["tiny-f32"].keys()
    for fact_id, neurons in refined["tiny-f32"].items():
        assert not neurons or neurons & refined["tiny-bf16"][fact_id], fact_id
