"""Causal tracing (Meng et al., "Locating and Editing Factual Associations in GPT", NeurIPS 2022): which hidden
states carry a fact from the subject to the answer.

Three kinds of runs of one prompt:

* the **clean** run: the prompt as it is; P(answer) is ``p_clean``;
* the **corrupted** runs: Gaussian noise added to the subject's token embeddings (the input embedding module's
  output at the subject's positions, :func:`kneuron.facts.subject.subject_positions`), ``samples`` draws of it
  (seeded), of standard deviation ``noise`` (ROME's: 3 × the standard deviation of the subjects' token embeddings,
  :func:`embedding_std`); ``p_corrupted`` is the mean of P(answer) over the draws;
* the **restored** runs: a corrupted run in which one state is set back to its clean value. A
  :class:`Restoration` says which: the residual stream (a block's output), the MLP output (the FFN output
  projection's) or the attention output (``ArchSpec.attention_out``) at one position, in one layer or a window of
  layers; or some FFN neurons' activations (kneuron's neuron space) at one position.

A restoration's **indirect effect** is the mean over the noise draws of P(answer) in the restored runs, minus
``p_corrupted``; every restoration reuses the same draws (as ROME's code does), so differences between
restorations are not noise between draws. P(answer) is kneuron's: the joint probability of the answer's tokens
(teacher-forced), read at the positions that predict them. :func:`trace` gives the token × layer maps: for the
residual stream one layer at a time, for the MLP and attention outputs ROME's window of ``window`` layers centred
on the layer (``layers[max(0, l - window // 2) : min(L, l + window - window // 2)]``; ROME's paper uses 10).

**Exactness and cost.** Restored runs are batched: many (restoration, draw) rows go in one forward pass, each row
joining the batch at the lowest block it restores, with its draw's corrupted input to that block (the blocks below
are the corrupted run's, which is kept), as integrated gradients' rows do
(:mod:`kneuron.models.partial_forward`); hooks then set each row's restored states at its own position. The
model is called on one row, so its position embeddings and masks are computed once. In a causal model the
positions before the subject's first token never see the noise: restoring them changes nothing, so they are not
run and their indirect effect is exactly 0. A masked model (optional in the paper's sense: ROME traces GPT) is
traced the same way, every position run. Tested against a naive loop (one full forward pass per restoration and
draw) on tiny models in float64.

Example:
    >>> query = encode(lm, prompt, fact.object)
    >>> maps = trace(lm, query, subject_positions(lm, prompt, fact.subject, query),
    ...              noise=3 * embedding_std(lm, [fact.subject]), samples=10, seed=0)
    >>> maps.effects["mlp"][maps.subject_last]     # (layers,) indirect effect of the MLP at the subject's last token
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from kneuron.attribution.limits import memory_budget
from kneuron.errors import InputError
from kneuron.facts.encoding import EncodedQuery, at_least_float32
from kneuron.models.hooks import Site, forward_hook, on_ffn_input, on_output
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import (
    batch_head_inputs_for_rows,
    forward_logits,
    record_block_inputs,
    rows_entering,
    rows_join_at_their_depth,
    start_at_layer,
)

#: the kinds of state a map restores, and the site each reads
KINDS: tuple[str, ...] = ("residual", "mlp", "attention")
SITE_OF: dict[str, Site] = {"residual": "block", "mlp": "mlp", "attention": "attention"}
#: ROME's noise scale: this many standard deviations of the subjects' token embeddings
NOISE_SCALE = 3.0
#: ROME's window of layers restored together for the MLP and attention maps
WINDOW = 10


@dataclass(frozen=True)
class Restoration:
    """States set back to their clean values in a corrupted run.

    Attributes:
        kind: "residual", "mlp" or "attention" (that output of each of ``layers`` at ``position``), or "neurons"
            (the FFN activations ``neurons`` at ``position``).
        position: the token position restored.
        layers: the layers restored (for "neurons": those of ``neurons``).
        neurons: ``(layer, index)`` of the FFN units a "neurons" restoration sets back.
    """

    kind: str
    position: int
    layers: tuple[int, ...]
    neurons: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of_neurons(cls, position: int, neurons: Iterable[tuple[int, int]]) -> Restoration:
        chosen = tuple(sorted({(int(layer), int(index)) for layer, index in neurons}))
        return cls("neurons", position, tuple(sorted({layer for layer, _ in chosen})), chosen)

    @property
    def start(self) -> int:
        """The lowest block this restoration changes: its rows join the batch there."""
        return min(self.layers)


def window_layers(layer: int, n_layers: int, window: int) -> tuple[int, ...]:
    """ROME's window of ``window`` layers around ``layer``: ``max(0, layer - window // 2)`` up to (not including)
    ``min(n_layers, layer + window - window // 2)``."""
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer + window - window // 2)))


@torch.no_grad()
def embedding_std(lm: LanguageModel, subjects: Sequence[str]) -> float:
    """The standard deviation of the input embeddings of the subjects' tokens (all their entries together), as
    ROME's ``collect_embedding_std`` computes it; the noise of a corrupted run is :data:`NOISE_SCALE` times it."""
    ids = [i for subject in subjects for i in lm.tokenizer(subject, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise InputError("No subject tokens to measure the embeddings' spread on: give at least one subject.")
    embeddings = lm.model.get_input_embeddings()(torch.tensor([ids], device=lm.device))
    return float(embeddings.double().std())


@dataclass
class TracePlan:
    """One prompt's clean and corrupted runs, kept for its restored runs."""

    query: EncodedQuery
    subject: tuple[int, ...]
    noise: torch.Tensor  # (samples, subject tokens, hidden): what the corrupted runs add to the embeddings
    clean: dict[tuple[Site, int], torch.Tensor]  # (seq, hidden) clean output of each site and layer
    activations: dict[int, torch.Tensor]  # (seq, neurons) clean FFN activations of each layer
    corrupted_inputs: dict[int, torch.Tensor]  # (samples, seq, hidden) corrupted input of each block
    p_clean: float
    p_corrupted_draws: np.ndarray  # (samples,)
    noise_std: float = 0.0  # the standard deviation the draws were scaled to

    @property
    def p_corrupted(self) -> float:
        return float(self.p_corrupted_draws.mean())

    @property
    def samples(self) -> int:
        return int(self.noise.shape[0])


def answer_probabilities(logits: torch.Tensor, answer: torch.Tensor) -> np.ndarray:
    """Per row, the joint probability of the answer from (rows, answer tokens, vocab) logits at its targets."""
    log_p = torch.log_softmax(at_least_float32(logits), dim=-1).gather(-1, answer[None, :, None].expand(
        logits.shape[0], -1, 1)).squeeze(-1).double().sum(-1)
    return log_p.exp().cpu().numpy()


@torch.no_grad()
def prepare(lm: LanguageModel, query: EncodedQuery, subject: Sequence[int], *, noise: float, samples: int = 10,
            seed: int = 0, kinds: Sequence[str] = KINDS) -> TracePlan:
    """The clean run (the output of ``kinds``' sites at every layer, the FFN activations, P(answer)) and ``samples``
    corrupted runs (noise of standard deviation ``noise`` on the subject's token embeddings, drawn from ``seed``):
    their blocks' inputs and P(answer)."""
    if samples < 1:
        raise InputError(f"Causal tracing needs at least one noise sample, not {samples}.")
    if not math.isfinite(noise) or noise < 0:
        raise InputError(f"The noise's standard deviation must be a number of at least 0, not {noise}.")
    subject = tuple(sorted({int(p) for p in subject}))
    if not subject or subject[0] < 0 or subject[-1] >= len(query):
        raise InputError(f"The subject's positions {subject} are not positions of the {len(query)}-token prompt.")
    ids = query.input_ids.to(lm.device)[None]
    targets = torch.tensor(query.target_positions, device=lm.device)[None]
    answer = torch.tensor(query.answer_ids, device=lm.device)
    clean: dict[tuple[Site, int], torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}

    def keep(key):
        def record(x):
            clean[key] = x[0].detach().clone()
        return record

    def keep_acts(layer):
        def record(x):
            acts[layer] = x[0].detach().clone()
        return record

    with ExitStack() as stack:
        for layer in range(lm.n_layers):
            for kind in kinds:
                stack.enter_context(on_output(lm, layer, SITE_OF[kind], keep((SITE_OF[kind], layer))))
            stack.enter_context(on_ffn_input(lm, layer, keep_acts(layer)))
        p_clean = float(answer_probabilities(forward_logits(lm, ids, targets, None), answer)[0])
    embed = lm.model.get_input_embeddings()
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randn((samples, len(subject), embed.weight.shape[-1]), generator=generator, dtype=torch.float64)
    draws = (noise * draws).to(device=lm.device, dtype=lm.dtype)
    index = torch.tensor(subject, device=lm.device)

    def corrupt(_module, _args, output):
        out = output.clone()
        out[:, index] = out[:, index] + draws
        return out

    inputs: dict[int, torch.Tensor] = {}
    with forward_hook(embed, corrupt), record_block_inputs(lm, inputs):
        logits = forward_logits(lm, ids.expand(samples, -1), targets, None)
    return TracePlan(query, subject, draws, clean, acts, inputs, p_clean, answer_probabilities(logits, answer),
                     float(noise))


def _row_bytes(lm: LanguageModel, plan: TracePlan) -> int:
    """A generous estimate of what one restored row keeps alive through a forward pass (no gradients)."""
    config = lm.model.config
    seq, hidden = len(plan.query), plan.corrupted_inputs[0].shape[-1]
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 8) or 8
    vocab = getattr(config, "vocab_size", 50000)
    element = torch.finfo(lm.dtype).bits // 8
    return element * seq * (24 * hidden + 4 * lm.n_neurons + 4 * heads * seq) + 12 * len(plan.query.answer_ids) * vocab


@torch.no_grad()
def restored_probabilities(lm: LanguageModel, plan: TracePlan, restorations: Sequence[Restoration], *,
                           max_rows: int | None = None) -> np.ndarray:
    """(restorations, samples) P(answer) of each restoration under each noise draw, batched (see the module
    docstring); ``max_rows`` caps a batch's rows (default: what the memory budget allows)."""
    for r in restorations:
        _check(lm, plan, r)
    rows = sorted(((i, s) for i in range(len(restorations)) for s in range(plan.samples)),
                  key=lambda item: restorations[item[0]].start)
    limit = max_rows or max(1, int(memory_budget() // _row_bytes(lm, plan)))
    out = np.empty((len(restorations), plan.samples))
    for first in range(0, len(rows), limit):
        chunk = rows[first:first + limit]
        values = _run(lm, plan, [(restorations[i], s) for i, s in chunk])
        for (i, s), value in zip(chunk, values, strict=True):
            out[i, s] = value
    return out


def _check(lm: LanguageModel, plan: TracePlan, r: Restoration) -> None:
    if r.kind not in (*KINDS, "neurons"):
        raise InputError(f"Unknown restoration kind {r.kind!r}: use one of {', '.join(KINDS)} or 'neurons'.")
    if not r.layers:
        raise InputError("A restoration needs at least one layer (or neuron).")
    if not 0 <= r.position < len(plan.query):
        raise InputError(f"Position {r.position} is not one of the prompt's {len(plan.query)} tokens.")
    for layer in r.layers:
        lm.check_layer(layer)
    for layer, index in r.neurons:
        lm.check_neuron(layer, index)


def _run(lm: LanguageModel, plan: TracePlan, rows: list[tuple[Restoration, int]]) -> np.ndarray:
    """One batch of (restoration, draw) rows, sorted by their start block; P(answer) of each."""
    device = lm.device
    joining: dict[int, list[torch.Tensor]] = {}
    sites: dict[tuple[Site, int], tuple[list[int], list[int]]] = {}
    units: dict[int, tuple[list[int], list[int], list[int]]] = {}
    for number, (r, sample) in enumerate(rows):
        joining.setdefault(r.start, []).append(plan.corrupted_inputs[r.start][sample:sample + 1])
        if r.kind == "neurons":
            for layer, index in r.neurons:
                entry = units.setdefault(layer, ([], [], []))
                entry[0].append(number)
                entry[1].append(r.position)
                entry[2].append(index)
        else:
            for layer in r.layers:
                entry2 = sites.setdefault((SITE_OF[r.kind], layer), ([], []))
                entry2[0].append(number)
                entry2[1].append(r.position)
    feeds = {layer: torch.cat(parts) for layer, parts in joining.items()}

    def restore(key, numbers, positions):
        rows_t, pos_t = torch.tensor(numbers, device=device), torch.tensor(positions, device=device)
        values = plan.clean[key][pos_t]

        def fn(x):
            out = x.clone()
            out[rows_t, pos_t] = values.to(out.dtype)
            return out
        return fn

    def restore_units(layer, numbers, positions, indices):
        rows_t, pos_t, idx_t = (torch.tensor(v, device=device) for v in (numbers, positions, indices))
        values = plan.activations[layer][pos_t, idx_t]

        def fn(x):
            out = x.clone()
            out[rows_t, pos_t, idx_t] = values.to(out.dtype)
            return out
        return fn

    start = min(feeds)
    ids = plan.query.input_ids.to(device)[None]
    targets = torch.tensor(plan.query.target_positions, device=device)[None]
    with ExitStack() as stack:
        if lm.shared_layers:
            stack.enter_context(rows_join_at_their_depth(lm, feeds))
        else:
            stack.enter_context(start_at_layer(lm, start, feeds[start]))
            for layer in sorted(feeds)[1:]:
                stack.enter_context(rows_entering(lm, layer, feeds[layer]))
        stack.enter_context(batch_head_inputs_for_rows(lm, start))
        for (site, layer), (numbers, positions) in sites.items():
            stack.enter_context(on_output(lm, layer, site, restore((site, layer), numbers, positions)))
        for layer, (numbers, positions, indices) in units.items():
            stack.enter_context(on_ffn_input(lm, layer, restore_units(layer, numbers, positions, indices)))
        logits = forward_logits(lm, ids, targets, None)
    return answer_probabilities(logits, torch.tensor(plan.query.answer_ids, device=device))


def indirect_effects(lm: LanguageModel, plan: TracePlan, restorations: Sequence[Restoration], *,
                     max_rows: int | None = None) -> np.ndarray:
    """Each restoration's indirect effect: mean P(answer) over the draws when restored, minus ``p_corrupted``."""
    if not restorations:
        return np.empty(0)
    return restored_probabilities(lm, plan, restorations, max_rows=max_rows).mean(1) - plan.p_corrupted


@dataclass
class TraceMaps:
    """A prompt's causal trace.

    Attributes:
        tokens: the tokens the model reads, as text.
        subject: the subject's positions; ``subject_last`` the last of them.
        last: the position that predicts the answer's first token (a causal prompt's last token).
        p_clean, p_corrupted: P(answer) clean, and under the noise (mean over the draws).
        effects: per kind ("residual", "mlp", "attention"), the (tokens, layers) indirect effects.
        window: the window of layers of the MLP and attention maps; samples, noise: the corruption.
    """

    tokens: list[str]
    subject: tuple[int, ...]
    last: int
    p_clean: float
    p_corrupted: float
    effects: dict[str, np.ndarray] = field(default_factory=dict)
    window: int = WINDOW
    samples: int = 0
    noise: float = 0.0

    @property
    def subject_last(self) -> int:
        return self.subject[-1]

    @property
    def total_effect(self) -> float:
        return self.p_clean - self.p_corrupted


def traced_positions(lm: LanguageModel, plan: TracePlan) -> list[int]:
    """The positions a map runs: in a causal model those from the subject's first token on (the ones before it
    never see the noise, so their effect is exactly 0), in a masked model every one."""
    first = plan.subject[0] if lm.kind == "causal" else 0
    return list(range(first, len(plan.query)))


def map_restorations(lm: LanguageModel, plan: TracePlan, kinds: Sequence[str] = KINDS, window: int = WINDOW,
                     ) -> list[Restoration]:
    """The restorations of :func:`trace`'s maps, kind by kind, position by position, layer by layer."""
    if window < 1:
        raise InputError(f"The window of layers must be at least 1, not {window}.")
    out = []
    for kind in kinds:
        for position in traced_positions(lm, plan):
            for layer in range(lm.n_layers):
                layers = (layer,) if kind == "residual" else window_layers(layer, lm.n_layers, window)
                out.append(Restoration(kind, position, layers))
    return out


def trace(lm: LanguageModel, query: EncodedQuery, subject: Sequence[int], *, noise: float, samples: int = 10,
          seed: int = 0, window: int = WINDOW, kinds: Sequence[str] = KINDS, max_rows: int | None = None,
          plan: TracePlan | None = None) -> TraceMaps:
    """The token × layer maps of the indirect effect of each of ``kinds`` (see the module docstring); ``plan``: an
    already prepared :func:`prepare` of the same query (its draws are reused)."""
    for kind in kinds:
        if kind not in KINDS:
            raise InputError(f"Unknown map kind {kind!r}: use one of {', '.join(KINDS)}.")
    plan = plan or prepare(lm, query, subject, noise=noise, samples=samples, seed=seed, kinds=kinds)
    restorations = map_restorations(lm, plan, kinds, window)
    effects = indirect_effects(lm, plan, restorations, max_rows=max_rows)
    positions = traced_positions(lm, plan)
    maps: dict[str, np.ndarray] = {}
    for k, kind in enumerate(kinds):
        grid = np.zeros((len(query), lm.n_layers))
        size = len(positions) * lm.n_layers
        grid[positions] = effects[k * size:(k + 1) * size].reshape(len(positions), lm.n_layers)
        maps[kind] = grid
    tokens = [lm.tokenizer.decode([int(t)]) for t in query.input_ids]
    return TraceMaps(tokens, plan.subject, query.position, plan.p_clean, plan.p_corrupted, maps, window,
                     plan.samples, plan.noise_std)


__all__ = [
    "KINDS", "NOISE_SCALE", "WINDOW", "Restoration", "TraceMaps", "TracePlan", "answer_probabilities",
    "embedding_std", "indirect_effects", "map_restorations", "prepare", "restored_probabilities", "trace",
    "traced_positions", "window_layers",
]
