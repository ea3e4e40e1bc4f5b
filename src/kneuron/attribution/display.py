"""The rich display of attribution's results in Jupyter: what ``NeuronScores._repr_html_`` and
``KnowledgeNeurons._repr_html_`` show (built from the pieces of :mod:`kneuron.display`).

A prompt's scores show the prompt and answer, the answer's probability (or log-probability) and rank, the
completeness gap of integrated gradients (its largest ``|gap|`` and, folded, each layer's ``Σ scores``,
``P(α=1) − P(α=0)`` and gap), the layers × neurons picture and the top neurons. A fact's knowledge neurons show the
fact, how many neurons in which layers, a table of the refined neurons (score, and in how many of the prompts'
coarse sets each is), the picture of the bag's mean scores with the refined and coarse neurons marked (when the
scores were kept), the warnings and, folded, the parameters. Nothing runs a model.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import torch

from kneuron.display import box, details, escape, grid_svg, line, number, table, warning

if TYPE_CHECKING:
    from kneuron.attribution.types import KnowledgeNeurons, NeuronScores

#: how many of a prompt's best neurons its display lists
TOP = 10


def _probability(scores: NeuronScores) -> str:
    if scores.objective == "logprob":
        return f"log P(answer) = <b>{number(scores.probability)}</b>"
    return f"P(answer) = <b>{number(scores.probability)}</b>"


def layer_gaps(scores: NeuronScores) -> list[tuple[int, float, float, float]]:
    """Per layer whose baseline was computed: ``(layer, Σ scores, P(α=1) − P(α=0), gap)`` (empty without a
    completeness gap)."""
    if scores.completeness_gap is None:
        return []
    sums = scores.scores.detach().to("cpu", torch.float64).sum(dim=1).tolist()
    rows = []
    for layer, (total, base, gap) in enumerate(zip(sums, scores.baseline.tolist(), scores.completeness_gap.tolist(),
                                                   strict=True)):
        if math.isfinite(base):
            rows.append((layer, total, scores.probability - base, gap))
    return rows


def _gap(scores: NeuronScores) -> str:
    """The completeness line and the folded per-layer table."""
    if scores.completeness_gap is None:
        return line(f"completeness gap: none (estimator {escape(scores.estimator)} defines no completeness)")
    rows = layer_gaps(scores)
    if not rows:
        return line("completeness gap: no layer's baseline computed")
    worst = max(rows, key=lambda row: abs(row[3]) if math.isfinite(row[3]) else math.inf)
    text = (f"completeness gap: max |gap| = <b>{number(abs(worst[3]))}</b> (L{worst[0]}) over {len(rows)} layers; "
            "it shrinks towards 0 as the steps grow")
    body = table(["layer", "Σ scores", "P(α=1) − P(α=0)", "gap"],
                 [[f"L{layer}", number(total, ".6g"), number(delta, ".6g"), number(gap, ".6g")]
                  for layer, total, delta, gap in rows])
    return line(text) + details("completeness per layer", body)


def scores_html(scores: NeuronScores) -> str:
    """The HTML display of one prompt's :class:`~kneuron.attribution.types.NeuronScores`."""
    title = f"NeuronScores: {scores.prompt!r} → {scores.answer!r}" if scores.prompt or scores.answer \
        else "NeuronScores"
    how = f"estimator {escape(scores.estimator)}"
    if scores.estimator == "ig":
        how += f", {scores.steps} steps ({escape(scores.alphas)} points)"
    rank = f"rank {scores.answer_rank} of {scores.vocab_size}" if scores.answer_ranks else ""
    parts = [line(_probability(scores), rank, how, f"position {scores.position}",
                  f"norm {escape(scores.norm)}" if scores.norm else ""),
             _gap(scores)]
    if scores.screen_layers is not None:
        parts.append(line("screened: only layers " + ", ".join(f"L{layer}" for layer in scores.screen_layers)
                          + " were scored (the others score 0)"))
    if scores.warning:
        parts.append(warning(scores.warning))
    parts.append(grid_svg(scores.scores, title=title))
    best = scores.top(TOP)
    parts.append(table(["neuron", "score", "activation"],
                       [[escape(n), number(n.score, ".6g"), number(float(scores.activations[n.layer, n.index]), ".4g")]
                        for n in best]))
    return box(title, *parts)


def _params(params: dict) -> str:
    rows = [[escape(key), escape(json.dumps(value, default=str) if not isinstance(value, str) else value)]
            for key, value in params.items()]
    return details(f"parameters ({len(rows)})", table(["parameter", "value"], rows, left=2)) if rows else ""


def knowledge_html(kn: KnowledgeNeurons) -> str:
    """The HTML display of a fact's :class:`~kneuron.attribution.types.KnowledgeNeurons`."""
    fact = kn.fact
    title = (f"KnowledgeNeurons: {fact.subject} —{fact.relation}→ {fact.object}" if fact is not None
             else "KnowledgeNeurons of loose prompts")
    layers = kn.per_layer()
    counts = ", ".join(f"L{layer}: {n}" for layer, n in layers.items())
    in_coarse = {n.key: sum(any(c.key == n.key for c in prompt) for prompt in kn.coarse) for n in kn.neurons}
    parts = [line(f"<b>{len(kn.neurons)}</b> refined neurons" + (f" in {len(layers)} layers ({counts})" if layers
                                                                 else ""),
                  f"{len(kn.coarse)} prompts",
                  "coarse per prompt: " + ", ".join(str(len(c)) for c in kn.coarse) if kn.coarse else "")]
    parts.extend(warning(text) for text in kn.warnings)
    if kn.neurons:
        parts.append(table(["neuron", "layer", "index", "mean score", "coarse in"],
                           [[escape(n), str(n.layer), str(n.index), number(n.score, ".6g"),
                             f"{in_coarse[n.key]}/{len(kn.coarse)}"] for n in kn.neurons]))
    else:
        parts.append(line("no refined neuron"))
    shaped = [s.scores for s in kn.scores if s.scores.shape == kn.scores[0].scores.shape] if kn.scores else []
    if shaped and len(shaped) == len(kn.scores):
        mean = torch.stack([s.detach().to("cpu", torch.float64) for s in shaped]).mean(dim=0)
        parts.append(grid_svg(mean, refined=kn.keys, coarse=[c.key for prompt in kn.coarse for c in prompt],
                              title=f"mean scores over {len(shaped)} prompts"))
        parts.append(line(f"picture: the mean scores over the {len(shaped)} prompts"))
    parts.append(_params(kn.params))
    return box(title, *parts)
