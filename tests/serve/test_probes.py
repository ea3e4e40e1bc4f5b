"""The live probes against slow, obviously-correct references on the tiny models, and their input refusals.

The reference of :func:`probe` patches the neurons with its own forward pre-hook on each layer's FFN output
projection (its input is the neuron activations), finds a shared layer's depth by counting the module's calls
itself (ALBERT), and takes its own float64 softmax over full logits: nothing of kneuron.models.hooks or
kneuron.studies.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from kneuron.attribution import find_knowledge_neurons
from kneuron.attribution.estimators import estimator_from_params
from kneuron.errors import KneuronError
from kneuron.facts import Fact, encode
from kneuron.models.hooks import scale_patches, suppress_patches
from kneuron.serve.probes import (
    MAX_NEURON_CHARS,
    MAX_NEURONS,
    MAX_PROMPT_CHARS,
    ProbeInputError,
    check_answer,
    check_prompt,
    fact_from_probe,
    find,
    parse_neurons,
    probe,
    save_found,
)
from kneuron.studies.metrics import answer_probabilities
from tiny_models import CAUSAL_FAMILIES, EAGER_ONLY, FAMILIES, MLM_FAMILIES, tiny_lm

NEURONS = [(0, 3), (2, 5), (1, 7), (2, 0)]
ANSWER = "Copenhagen"  # two tokens in the tiny vocabulary: Copen ##hagen


def prompt_for(lm, text: str = "The capital of Denmark is") -> str:
    return text if lm.kind == "causal" else text + " [Y]."


@torch.no_grad()
def reference(lm, prompt: str, answer: str, neurons, op: str | None, value: float, top: int) -> dict:
    """Probability, first-token rank (1 = top) and top-k of one condition, the slow way."""
    query = encode(lm, prompt, answer)
    by_module: dict[int, tuple[torch.nn.Module, list[int]]] = {}
    for depth in range(lm.n_layers):
        module = lm.ffn_out(depth)
        by_module.setdefault(id(module), (module, []))[1].append(depth)
    handles = []
    for module, depths in by_module.values():
        calls = [0]

        def hook(_module, args, depths=depths, calls=calls):
            depth = depths[calls[0] % len(depths)]  # the k-th call of a shared module in a pass is its k-th depth
            calls[0] += 1
            chosen = [index for layer, index in neurons if layer == depth]
            if op is None or not chosen:
                return None
            x = args[0].clone()
            row = x[query.position] if x.dim() == 2 else x[0, query.position]  # OPT flattens (batch, seq)
            for index in chosen:
                row[index] = 0.0 if op == "set" else row[index] * value
            return (x, *args[1:])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        logits = lm.model(input_ids=query.input_ids[None]).logits[0].double()
    finally:
        for handle in handles:
            handle.remove()
    probs = [torch.softmax(logits[p], dim=-1) for p in query.target_positions]
    probability = math.prod(float(p[t]) for p, t in zip(probs, query.answer_ids, strict=True))
    first = probs[0]
    chosen = torch.topk(first, top)
    return {"probability": probability, "token_probabilities": [float(p[t]) for p, t in
                                                                zip(probs, query.answer_ids, strict=True)],
            "rank": int((first > first[query.answer_ids[0]]).sum()) + 1,
            "top_ids": chosen.indices.tolist(), "top_probabilities": chosen.values.tolist()}


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_equals_reference(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    prompt = prompt_for(lm)
    result = probe(lm, prompt, ANSWER, NEURONS, factor=3.5, top=7)
    json.dumps(result, allow_nan=False)  # JSON as it is
    query = encode(lm, prompt, ANSWER)
    assert len(query.answer_ids) == 2
    assert result["answer_tokens"] == [lm.tokenizer.decode([i]) for i in query.answer_ids]
    assert result["neurons"] == ["L0.N3", "L2.N5", "L1.N7", "L2.N0"]
    assert list(result["conditions"]) == ["as_is", "suppressed", "amplified"]
    rel = 1e-6 if family in EAGER_ONLY else 1e-9  # eager attention takes its softmax in float32
    expected = {"as_is": reference(lm, prompt, ANSWER, NEURONS, None, 0.0, 7),
                "suppressed": reference(lm, prompt, ANSWER, NEURONS, "set", 0.0, 7),
                "amplified": reference(lm, prompt, ANSWER, NEURONS, "scale", 3.5, 7)}
    for name, want in expected.items():
        got = result["conditions"][name]
        assert got["probability"] == pytest.approx(want["probability"], rel=rel)
        assert got["token_probabilities"] == pytest.approx(want["token_probabilities"], rel=rel)
        assert math.exp(got["log_probability"]) == pytest.approx(want["probability"], rel=rel)
        assert got["rank"] == want["rank"]
        assert [t["id"] for t in got["top"]] == want["top_ids"]
        assert [t["probability"] for t in got["top"]] == pytest.approx(want["top_probabilities"], rel=rel)
        assert [t["token"] for t in got["top"]] == [lm.tokenizer.decode([i]) for i in want["top_ids"]]
        if name != "as_is":
            before = expected["as_is"]["probability"]
            assert got["relative_change"] == pytest.approx((want["probability"] - before) / before, rel=1e-6)
    # the patches do something, so the comparison above can fail
    assert abs(result["conditions"]["suppressed"]["relative_change"]) > 1e-6
    assert abs(result["conditions"]["amplified"]["relative_change"]) > 1e-6


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "albert"])
def test_probe_probabilities_are_answer_probabilities(family):
    """The probabilities are the suppress / amplify study's own (answer_probabilities, patches at the position)."""
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    prompt = prompt_for(lm)
    result = probe(lm, prompt, ANSWER, NEURONS)
    query = encode(lm, prompt, ANSWER)
    for name, patches in (("as_is", []), ("suppressed", suppress_patches(NEURONS)),
                          ("amplified", scale_patches(NEURONS, 2.0))):
        assert result["conditions"][name]["probability"] == pytest.approx(
            answer_probabilities(lm, [query], patches)[0], rel=1e-12)
    assert result["position"] == query.position and result["factor"] == 2.0


def test_probe_without_neurons_has_only_the_model_as_it_is():
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    result = probe(lm, "The capital of Denmark is", ANSWER, [])
    assert list(result["conditions"]) == ["as_is"]
    assert result["note"] and result["neurons"] == []
    assert result["conditions"]["as_is"]["probability"] == pytest.approx(
        reference(lm, "The capital of Denmark is", ANSWER, [], None, 0.0, 5)["probability"], rel=1e-9)


@pytest.mark.parametrize("family", MLM_FAMILIES[:2])
def test_masked_prompt_takes_the_mask_token_for_y(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    mask = lm.tokenizer.mask_token
    by_mask = probe(lm, f"The capital of Denmark is {mask}.", ANSWER, NEURONS)
    by_y = probe(lm, "The capital of Denmark is [Y].", ANSWER, NEURONS)
    assert by_mask["conditions"] == by_y["conditions"]


# ------------------------------------------------------------------------------------------------- refusals


class ForwardCounter:
    """Counts forward passes of the model (a refusal must come before any)."""

    def __init__(self, lm) -> None:
        self.count = 0
        self.handle = lm.model.register_forward_pre_hook(self._seen)

    def _seen(self, *_args) -> None:
        self.count += 1

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(ProbeInputError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def llama():
    return tiny_lm("llama", dtype=torch.float64, layers=3)


@pytest.fixture(scope="module")
def bert():
    return tiny_lm("bert", dtype=torch.float64, layers=3)


def test_megabyte_prompt_is_refused_before_the_model(llama):
    with ForwardCounter(llama) as forwards:
        message = refused(probe, llama, "word " * 200_000, ANSWER, NEURONS)
    assert f"{MAX_PROMPT_CHARS:,}" in message and "1,000,000" in message
    assert forwards.count == 0


def test_ten_thousand_neurons_are_refused_cheaply(llama):
    names = [f"L{i % 3}.N{i % 32}" for i in range(10_000)]
    with ForwardCounter(llama) as forwards:
        assert "10,000 neurons" in refused(parse_neurons, names, llama)
        assert f"{MAX_NEURON_CHARS:,}" in refused(parse_neurons, ", ".join(names), llama)
        assert "1,000 neurons" in refused(parse_neurons, " ".join(names[:1000]), llama)  # under the length limit
        assert "10,000 neurons" in refused(probe, llama, "The capital of Denmark is", ANSWER,
                                           [(i % 3, i % 32) for i in range(10_000)])
    assert forwards.count == 0
    assert len(parse_neurons(names[:MAX_NEURONS], llama)) == 3 * 32  # at the limit: accepted (duplicates dropped)


def test_parse_neurons_keeps_order_and_drops_duplicates(llama):
    assert parse_neurons("L2.N5, l0.n3\nL1.N7 L2.N5,,L0.N31", llama) == [(2, 5), (0, 3), (1, 7), (0, 31)]
    assert parse_neurons(["L2.N5", "L0.N3, L2.N5"], llama) == [(2, 5), (0, 3)]
    assert parse_neurons("  ", llama) == [] and parse_neurons([], llama) == []


@pytest.mark.parametrize("text", ["L1.N2, foo", "L1N2", "L-1.N3", "L1.N2.N3", "Layer1.N2", "L1.Nx"])
def test_malformed_neuron_names_are_quoted(llama, text):
    message = refused(parse_neurons, text, llama)
    bad = [t for t in text.replace(",", " ").split() if t != "L1.N2"][0]
    assert repr(bad) in message and "L29.N1066" in message


@pytest.mark.parametrize("text", ["L3.N0", "L0.N32", "L99999.N1"])
def test_neurons_outside_the_model_are_refused(llama, text):
    message = refused(parse_neurons, text, llama)
    assert text in message and "3 x 32" in message
    refused(probe, llama, "The capital of Denmark is", ANSWER, parse_neurons_unchecked(text))


def parse_neurons_unchecked(text: str) -> list[tuple[int, int]]:
    layer, index = text[1:].split(".N")
    return [(int(layer), int(index))]


def test_masked_prompt_without_y_is_refused(bert):
    message = refused(probe, bert, "The capital of Denmark is", ANSWER, [])
    assert "[Y]" in message and "masked" in message


def test_prompt_and_answer_refusals(llama, bert):
    assert "empty" in refused(probe, llama, "   ", ANSWER, [])
    assert "empty" in refused(probe, llama, "The capital of Denmark is", " ", [])
    assert "U+0000" in refused(probe, llama, "The capital\x00 of Denmark is", ANSWER, [])
    assert "U+001B" in refused(check_prompt, "The \x1b[31m capital")
    assert "one line" in refused(check_answer, "Copen\nhagen")
    assert "200" in refused(check_answer, "x" * 201)
    assert "[Y]" in refused(check_answer, "[Y]")
    assert "mask token" in refused(probe, llama, "The capital of Denmark is [MASK]", ANSWER, [])
    assert "text" in refused(check_prompt, None)
    assert "vocabulary" in refused(probe, bert, "The capital of Denmark is [Y].", "Xylophone", [])
    assert "[X]" in refused(probe, llama, "The capital of [X] is", ANSWER, [])
    assert "nothing before [Y]" in refused(probe, llama, "[Y] is the capital of Denmark.", ANSWER, [])
    assert "factor" in refused(probe, llama, "The capital of Denmark is", ANSWER, NEURONS, factor=float("nan"))
    assert "top" in refused(probe, llama, "The capital of Denmark is", ANSWER, NEURONS, top=0)
    assert "whole number" in refused(probe, llama, "The capital of Denmark is", ANSWER, NEURONS, top=2.5)
    check_prompt("The capital\tof\nDenmark is")  # tabs and line breaks are whitespace, not control characters


def test_prompt_longer_than_the_model_reads_is_refused(llama):
    text = "The capital of " * 40 + "Denmark is"  # 600 characters, 160 tokens; the tiny model reads 64
    assert len(text) < MAX_PROMPT_CHARS
    assert "at most 64 positions" in refused(probe, llama, text, ANSWER, [])


def test_limits_are_the_briefs():
    assert (MAX_PROMPT_CHARS, MAX_NEURONS) == (2000, 512)


# ---------------------------------------------------------------------------------------------------- find

IG = {"estimator": "ig", "steps": 3, "alphas": "right", "objective": "prob", "threshold": 0.2, "share": 0.3}
GXA = {"estimator": "gxa", "objective": "prob", "threshold": 0.2, "share": "adaptive"}
SCREENED = {**IG, "screen": 2, "screen_estimator": "gxa"}


@pytest.mark.parametrize("family", [CAUSAL_FAMILIES[0], "llama", "bert"])
@pytest.mark.parametrize("params", [IG, GXA, SCREENED], ids=["ig", "gxa", "screened"])
def test_find_equals_find_knowledge_neurons(family, params):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    texts = [prompt_for(lm, t) for t in ("The capital of Denmark is", "The capital city of Denmark is",
                                         "Denmark's capital city is")]
    seen = []
    found = find(lm, texts, ANSWER, params, on_prompt=lambda done, total: seen.append((done, total)))
    json.dumps(found, allow_nan=False)
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    direct = find_knowledge_neurons(lm, texts, ANSWER, threshold=params["threshold"], share=params["share"],
                                    estimator=estimator_from_params(params))
    assert [(n["layer"], n["index"], n["score"], n["name"]) for n in found["neurons"]] == [
        (n.layer, n.index, n.score, str(n)) for n in direct.neurons]
    assert [[(n["layer"], n["index"], n["score"]) for n in coarse] for coarse in found["coarse"]] == [
        [(n.layer, n.index, n.score) for n in coarse] for coarse in direct.coarse]
    assert found["probabilities"] == pytest.approx([math.exp(s.log_probability) for s in direct.scores])
    assert found["answer_ranks"] == [s.answer_rank for s in direct.scores] and all(found["answer_ranks"])
    assert found["warnings"] == direct.warnings and found["share_used"] == direct.params["share_used"]
    assert found["per_layer"] == [direct.per_layer().get(layer, 0) for layer in range(lm.n_layers)]
    assert found["estimator"] == params["estimator"] and found["prompts"] == texts
    assert found["neurons"], "a bag with neurons, so that the comparison means something"


def test_find_refusals(llama):
    assert "at most 8" in refused(find, llama, ["The capital of Denmark is"] * 9, ANSWER, IG)
    assert "at least one" in refused(find, llama, [], ANSWER, IG)
    message = refused(find, llama, ["The capital of Denmark is", "[Y] is Denmark's capital."], ANSWER, IG)
    assert message.startswith("Prompt 2: ")
    assert refused(find, llama, ["The capital of Denmark is", "x" * 3000], ANSWER, IG).startswith("Prompt 2 is 3,000")


# ------------------------------------------------------------------------------------------------ the fact


def test_fact_from_probe_builds_the_atlas_kind_of_fact():
    templates = ("The capital of [X] is [Y].", "[X]'s capital is [Y].")
    fact = fact_from_probe(" Denmark ", "capital", "Copenhagen", list(templates))
    assert fact == Fact("Denmark", "capital", "Copenhagen", templates)
    assert fact.id == "capital:Denmark"
    assert "[Y]" in refused(fact_from_probe, "Denmark", "capital", "Copenhagen", ["The capital of [X] is"])
    assert "1 to 8" in refused(fact_from_probe, "Denmark", "capital", "Copenhagen", [])
    assert "empty" in refused(fact_from_probe, "Denmark", "", "Copenhagen", ["[X] has [Y]."])
    assert isinstance(ProbeInputError("x"), KneuronError)


# ---------------------------------------------------------------------------------------------------- save


@pytest.fixture(scope="module")
def saved_lm():
    from store.helpers import tiny_model

    return tiny_model("llama")


def tiny_atlas(lm, path, known: bool = False, **options):
    from kneuron.store import run
    from store.helpers import tiny_facts

    run(lm, tiny_facts()[:2], path, steps=3, share=0.3, known_only=known, progress=False, **options)
    return path


@pytest.mark.parametrize("estimator", ["ig", "gxa"])
def test_save_found_appends_the_fact_with_the_atlas_params(saved_lm, tmp_path, estimator):
    from kneuron.store import Atlas
    from store.helpers import tiny_facts

    path = tiny_atlas(saved_lm, tmp_path / "tiny.sqlite", estimator=estimator)
    with Atlas.open(path, read_only=True) as atlas:
        params, before = atlas.params, [f.id for f in atlas.facts()]
    sweden = tiny_facts()[4]
    saved = save_found(path, saved_lm, sweden)
    assert saved["status"] == "added" and saved["fact_id"] == "capital:Sweden" and "\n" not in saved["message"]
    direct = find_knowledge_neurons(saved_lm, sweden, threshold=params["threshold"], share=params["share"],
                                    estimator=estimator_from_params(params))
    assert saved["neurons"] == [str(n) for n in direct.neurons] and saved["neurons"]
    with Atlas.open(path, read_only=True) as atlas:
        assert [f.id for f in atlas.facts()] == [*before, "capital:Sweden"]
        assert atlas.params == params
        assert [str(n) for n in atlas.knowledge_neurons("capital:Sweden").neurons] == saved["neurons"]
    again = save_found(path, saved_lm, sweden)
    assert again["status"] == "exists" and again["neurons"] == saved["neurons"]


def test_save_found_reports_dropped_and_invalid_facts(saved_lm, tmp_path):
    from kneuron.facts.known import answer_ranks
    from kneuron.store import Atlas
    from store.helpers import tiny_facts

    path = tiny_atlas(saved_lm, tmp_path / "known.sqlite", known=True, top=1)  # known: top-1 for most prompts
    unknown = [f for f, ranks in zip(tiny_facts(), answer_ranks(saved_lm, tiny_facts()), strict=True)
               if all(rank >= 1 for rank in ranks)][-1]
    saved = save_found(path, saved_lm, unknown)
    assert saved["status"] == "dropped" and saved["neurons"] == [] and "known filter" in saved["message"]
    odd = Fact("Denmark", "capital", "Copenhagen", ("[Y] is the capital of [X].",))  # nothing for a causal model
    invalid = save_found(path, saved_lm, odd)
    assert invalid["status"] == "invalid" and "nothing before [Y]" in invalid["message"]
    with Atlas.open(path, read_only=True) as atlas:
        status = {row["id"]: row["status"] for row in atlas.fact_rows(status=None)}
    assert status[unknown.id] == "dropped" and status[odd.id] == "invalid"
    assert save_found(path, saved_lm, unknown)["status"] == "dropped"  # again: still dropped, nothing computed


def save_refused(path, lm, fact) -> str:
    with pytest.raises(KneuronError) as caught:
        save_found(path, lm, fact)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_save_found_refuses_a_locked_atlas_another_model_and_a_changed_fact(saved_lm, tmp_path):
    import os

    from kneuron.store import files
    from store.helpers import dump, tiny_facts, tiny_model

    path = tiny_atlas(saved_lm, tmp_path / "tiny.sqlite")
    before = dump(path)
    sweden = tiny_facts()[4]
    held = files.lock(path)  # another run's lock
    try:
        assert "another kneuron run" in save_refused(path, saved_lm, sweden)
    finally:
        os.close(held)
    assert "loaded model" in save_refused(path, tiny_model("llama", seed=1), sweden)
    changed = Fact("France", "capital", "Berlin", tiny_facts()[0].templates)
    assert "other content" in save_refused(path, saved_lm, changed)
    assert "No atlas" in save_refused(tmp_path / "missing.sqlite", saved_lm, sweden)
    assert dump(path) == before  # nothing was written
    assert not (tmp_path / "missing.sqlite").exists()
    assert save_found(path, saved_lm, sweden)["status"] == "added"  # the lock released: it saves
