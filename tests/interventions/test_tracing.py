"""Causal tracing, batched, against a naive loop: one full forward pass per (restoration, noise draw), with plain
hooks that add the draw to the subject's embeddings and put the clean states back, on tiny models in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.errors import InputError
from kneuron.facts.encoding import answer_log_probs, encode
from kneuron.facts.fact import Prompt
from kneuron.facts.subject import subject_positions
from kneuron.interventions.tracing import (
    Restoration,
    embedding_std,
    indirect_effects,
    map_restorations,
    prepare,
    trace,
    window_layers,
)
from tiny_models import tiny_lm

TEMPLATE = "The capital of [X] is [Y]."


def _setup(family: str, layers: int = 3, subject: str = "Stockholm Sweden", answer: str = "Copenhagen"):
    lm = tiny_lm(family, dtype=torch.float64, layers=layers)
    prompt = Prompt.from_template(TEMPLATE, subject)
    query = encode(lm, prompt, answer)
    return lm, query, subject_positions(lm, prompt, subject, query)


def _module(lm, kind: str, layer: int):
    return {"residual": lm.block, "mlp": lm.ffn_out, "attention": lm.attention_out}[kind](layer)


def _at_depths(lm, kind: str, wanted: dict, pre: bool = False) -> list:
    """Hooks on the modules of ``kind`` calling ``wanted[layer](...)`` at the forwards of depth ``layer`` only: the
    k-th forward of a module in a pass is depth k of the depths that run it (ALBERT runs one module at each)."""
    modules = {}
    for layer in range(lm.n_layers):
        module = lm.ffn_out(layer) if kind == "neurons" else _module(lm, kind, layer)
        modules.setdefault(id(module), (module, []))[1].append(layer)
    handles = []
    for module, depths in modules.values():
        calls = [0]

        def hook(_m, *rest, depths=depths, calls=calls):
            depth = depths[calls[0] % len(depths)]
            calls[0] += 1
            return wanted[depth](_m, *rest) if depth in wanted else None
        handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
    return handles


def _naive_probability(lm, query, subject, draw, clean, restoration) -> float:
    """P(answer) of one full forward pass with ``draw`` on the subject's embeddings and ``restoration``'s states
    put back from ``clean`` ({(kind, layer): (seq, hidden)}, or {("neurons", layer): (seq, neurons)})."""
    handles = []

    def corrupt(_m, _a, out):
        out = out.clone()
        out[0, list(subject)] += draw
        return out

    def put_back(key):
        def hook(_m, _a, out):
            hidden = out[0] if isinstance(out, tuple) else out
            flat = hidden.dim() == 2
            h = hidden.clone().view(1, len(query), -1) if flat else hidden.clone()
            h[0, restoration.position] = clean[key][restoration.position]
            h = h.view(-1, h.shape[-1]) if flat else h
            return (h, *out[1:]) if isinstance(out, tuple) else h
        return hook

    def put_units(layer):
        def hook(_m, args):
            x = args[0]
            flat = x.dim() == 2
            x = x.clone().view(1, len(query), -1) if flat else x.clone()
            for lay, index in restoration.neurons:
                if lay == layer:
                    x[0, restoration.position, index] = clean[("neurons", layer)][restoration.position, index]
            return (x.view(-1, x.shape[-1]) if flat else x, *args[1:])
        return hook

    try:
        handles.append(lm.model.get_input_embeddings().register_forward_hook(corrupt))
        if restoration is not None:
            if restoration.kind == "neurons":
                handles += _at_depths(lm, "neurons", {layer: put_units(layer) for layer in restoration.layers},
                                      pre=True)
            else:
                handles += _at_depths(lm, restoration.kind, {layer: put_back((restoration.kind, layer))
                                                             for layer in restoration.layers})
        with torch.no_grad():
            logits = lm.model(input_ids=query.input_ids[None]).logits[0]
    finally:
        for h in handles:
            h.remove()
    return float(answer_log_probs(logits, query).sum().exp())


def _naive_clean(lm, query):
    clean, handles = {}, []

    def keep(key):
        def hook(_m, _a, out):
            hidden = out[0] if isinstance(out, tuple) else out
            clean[key] = hidden.reshape(len(query), -1).clone()
        return hook

    def keep_units(layer):
        def hook(_m, args):
            clean[("neurons", layer)] = args[0].reshape(len(query), -1).clone()
        return hook

    for kind in ("residual", "mlp", "attention"):
        handles += _at_depths(lm, kind, {layer: keep((kind, layer)) for layer in range(lm.n_layers)})
    handles += _at_depths(lm, "neurons", {layer: keep_units(layer) for layer in range(lm.n_layers)}, pre=True)
    with torch.no_grad():
        lm.model(input_ids=query.input_ids[None])
    for h in handles:
        h.remove()
    return clean


def _naive_effects(lm, query, subject, noise, restorations):
    clean = _naive_clean(lm, query)
    corrupted = np.mean([_naive_probability(lm, query, subject, d, clean, None) for d in noise])
    return np.array([np.mean([_naive_probability(lm, query, subject, d, clean, r) for d in noise]) - corrupted
                     for r in restorations]), corrupted


# one family per way of running rows: plain (llama), Conv1D (gpt2), flattened tokens (opt), ALiBi laid out per
# head (bloom), a post-FFN norm (gemma2), masked (bert) and one block at every depth (albert)
@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bloom", "gemma2", "bert", "albert"])
def test_batched_restorations_equal_the_naive_loop(family):
    lm, query, subject = _setup(family)
    plan = prepare(lm, query, subject, noise=0.5, samples=3, seed=7)
    restorations = map_restorations(lm, plan, window=2)
    restorations.append(Restoration.of_neurons(query.position, [(0, 1), (2, 5), (2, 9)]))
    restorations.append(Restoration("mlp", query.position, (0, 2)))
    batched = indirect_effects(lm, plan, restorations)
    small_batches = indirect_effects(lm, plan, restorations, max_rows=5)
    naive, corrupted = _naive_effects(lm, query, subject, plan.noise, restorations)
    assert plan.p_corrupted == pytest.approx(corrupted, rel=1e-9)
    np.testing.assert_allclose(batched, naive, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(small_batches, naive, rtol=1e-7, atol=1e-12)
    assert np.abs(naive).max() > 1e-2 * plan.p_clean  # the restorations do something


def test_maps_skip_only_what_cannot_change_in_a_causal_model():
    lm, query, subject = _setup("llama", answer="Paris")
    maps = trace(lm, query, subject, noise=0.5, samples=2, seed=1, window=2)
    plan = prepare(lm, query, subject, noise=0.5, samples=2, seed=1)
    every = [Restoration(kind, p, (layer,) if kind == "residual" else window_layers(layer, lm.n_layers, 2))
             for kind in ("residual", "mlp", "attention") for p in range(len(query)) for layer in range(lm.n_layers)]
    naive, _ = _naive_effects(lm, query, subject, plan.noise, every)
    grid = np.stack([maps.effects[k] for k in ("residual", "mlp", "attention")]).reshape(-1)
    np.testing.assert_allclose(grid, naive, rtol=1e-7, atol=1e-12)
    assert maps.effects["residual"][:subject[0]].tolist() == [[0.0] * lm.n_layers] * subject[0]
    assert maps.tokens[maps.subject_last] == "Sweden" and maps.last == query.position
    # restoring the whole residual stream at the last layer's answer position gives the clean probability back
    assert maps.effects["residual"][maps.last, -1] == pytest.approx(maps.total_effect, rel=1e-9)


def test_zero_noise_changes_nothing():
    lm, query, subject = _setup("llama")
    maps = trace(lm, query, subject, noise=0.0, samples=2, seed=0, window=2)
    assert maps.p_corrupted == pytest.approx(maps.p_clean, rel=1e-12)
    assert max(np.abs(m).max() for m in maps.effects.values()) < 1e-12


def test_draws_are_seeded_and_scaled():
    lm, query, subject = _setup("llama")
    a = prepare(lm, query, subject, noise=0.5, samples=4, seed=3)
    b = prepare(lm, query, subject, noise=0.5, samples=4, seed=3)
    assert torch.equal(a.noise, b.noise) and a.p_corrupted == b.p_corrupted
    assert not torch.equal(a.noise, prepare(lm, query, subject, noise=0.5, samples=4, seed=4).noise)
    assert embedding_std(lm, ["France"]) == pytest.approx(
        float(lm.model.get_input_embeddings().weight[lm.tokenizer.convert_tokens_to_ids("France")].std()))


def test_bad_input_is_refused_in_one_line():
    lm, query, subject = _setup("llama")
    with pytest.raises(InputError):
        prepare(lm, query, subject, noise=0.5, samples=0)
    with pytest.raises(InputError):
        prepare(lm, query, (99,), noise=0.5)
    plan = prepare(lm, query, subject, noise=0.5, samples=1)
    with pytest.raises(InputError):
        indirect_effects(lm, plan, [Restoration("bogus", 0, (0,))])
    with pytest.raises(InputError):
        indirect_effects(lm, plan, [Restoration("mlp", len(query), (0,))])
