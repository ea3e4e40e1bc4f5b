"""Plain data produced by attribution: per-prompt neuron scores and a fact's knowledge neurons, and their rich
display in Jupyter (``_repr_html_``, built from the pieces of :mod:`kneuron.display`).

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
from dataclasses import dataclass, field
from typing import Any

import torch

from kneuron.display import box, details, escape, grid_svg, line, number, table, warning
from kneuron.facts.fact import Fact

#: an answer whose first token ranks below this many of the model's predictions gets a warning (the same top-10
#: that ``kneuron facts`` calls known)
LIKELY_TOP = 10


@dataclass(frozen=True, order=True)
class Neuron:
    """One FFN neuron, ``(layer, index)``, with the score that selected it; prints as ``L17.N1234``."""

    layer: int
    index: int
    score: float = field(default=0.0, compare=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.layer, self.index)

    def __str__(self) -> str:
        return neuron_name(self.layer, self.index)


def neuron_name(layer: int, index: int) -> str:
    """How kneuron names a neuron everywhere (CLI, report, web pages and their addresses): ``L17.N1234``."""
    return f"L{int(layer)}.N{int(index)}"


@dataclass
class NeuronScores:
    """The attribution of one prompt's FFN neurons (integrated gradients, or another estimator).

    Attributes:
        scores: (layers, neurons) attribution of every neuron at the answer position.
        activations: (layers, neurons) clean activations at that position.
        probability: the answer's objective with nothing scaled (alpha = 1): its probability, or its
            log-probability when ``objective == "logprob"``.
        baseline: (layers,) the objective with that layer's activations at the answer position zeroed (NaN where
            not computed: a layer not scored, or an estimator without completeness).
        completeness_gap: (layers,) ``scores[l].sum() - (probability - baseline[l])``; it shrinks
            towards 0 as ``steps`` grows (the completeness property of integrated gradients). None for an
            estimator that defines no completeness (its class's ``has_completeness`` is False).
        prompt, answer: what was attributed; ``position`` the attributed token position.
        steps, objective, alphas: how (``alphas`` the points of the Riemann sum).
        log_probability: the answer's clean joint log-probability (finite where ``probability`` underflows).
        answer_ranks: each answer token's clean rank at its position (1 = the model's top prediction), out of
            ``vocab_size``; empty when unknown (e.g. scores read back from an older atlas).
        estimator: the name of the estimator that made the scores (:mod:`kneuron.attribution.estimators`): "ig"
            (integrated gradients), "gxa" (gradient x activation) or "lpi" (log probability increase). Only
            integrated gradients computes ``baseline`` and ``completeness_gap``; the others leave the baseline NaN
            and the gap None.
        norm: for a model that normalises its FFN outputs (Gemma 2/3, OLMo 2), how the scores treated that norm:
            "frozen" (its scale held at the clean value) or "live"; None for other models (or unknown).
        screen_layers: the layers a screened estimator chose for this prompt's bag and scored (ascending; the
            others score 0); None when the estimator scored every layer it was asked to.

    The scores are float64 whatever the model's dtype: an answer the model never predicts can have a
    probability below float32's range (1e-45), whose scores would all be 0. Such scores are exact but say
    little about the fact; :attr:`warning` says so when the answer is not among the model's likely tokens.
    """

    scores: torch.Tensor
    activations: torch.Tensor
    probability: float
    baseline: torch.Tensor
    completeness_gap: torch.Tensor | None
    prompt: str = ""
    answer: str = ""
    position: int = -1
    steps: int = 20
    objective: str = "prob"
    alphas: str = "right"
    log_probability: float = math.nan
    answer_ranks: tuple[int, ...] = ()
    vocab_size: int = 0
    estimator: str = "ig"
    norm: str | None = None
    screen_layers: tuple[int, ...] | None = None

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def answer_rank(self) -> int:
        """The clean rank of the answer's first token (1 = the model's top prediction; 0 when unknown)."""
        return self.answer_ranks[0] if self.answer_ranks else 0

    @property
    def likely(self) -> bool:
        """Whether the answer's first token is among the model's :data:`LIKELY_TOP` predictions (True if unknown)."""
        return not self.answer_ranks or self.answer_rank <= LIKELY_TOP

    def unlikely_warning(self, where: str = "") -> str | None:
        """A warning when the answer is not among the model's likely tokens, else None; ``where`` names the prompt."""
        if self.likely:
            return None
        if math.isfinite(self.log_probability) and math.exp(self.log_probability) > 0:
            chance = f"P={math.exp(self.log_probability):.1e}"
        else:
            chance = f"log P={self.log_probability:.1f}"
        place = f" {where}" if where else ""
        return (f"answer {self.answer!r} ranks {self.answer_rank} of {self.vocab_size}{place} ({chance}): the model "
                f"does not predict it, so its neurons say little")

    @property
    def warning(self) -> str | None:
        """:meth:`unlikely_warning` for this prompt alone."""
        return self.unlikely_warning()

    def top(self, k: int = 10) -> list[Neuron]:
        """The ``k`` highest-scoring neurons, best first."""
        flat = self.scores.flatten()
        values, indices = torch.topk(flat, min(k, flat.numel()))
        width = self.scores.shape[1]
        return [Neuron(int(i) // width, int(i) % width, float(v)) for v, i in zip(values, indices, strict=True)]

    def _repr_html_(self) -> str:
        """Jupyter's display: probability, completeness gap, the layers x neurons picture, the top neurons
        (:func:`scores_html`; no model runs)."""
        return scores_html(self)


@dataclass
class KnowledgeNeurons:
    """The refined knowledge neurons of a fact, with the per-prompt coarse sets they came from.

    Attributes:
        neurons: the refined neurons, best (highest mean score over the bag) first.
        coarse: per prompt, its coarse neurons.
        fact: the fact (None when attributing loose prompts).
        params: the parameters used (threshold, share, adaptive rule, steps, ...).
        scores: the per-prompt NeuronScores they were selected from (when kept).
        warnings: one line per prompt whose answer is not among the model's likely tokens (where it ranks).
    """

    neurons: list[Neuron]
    coarse: list[list[Neuron]]
    fact: Fact | None = None
    params: dict[str, Any] = field(default_factory=dict)
    scores: list[NeuronScores] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[tuple[int, int]]:
        return [n.key for n in self.neurons]

    def per_layer(self) -> dict[int, int]:
        """Count of refined neurons in each layer that has any."""
        counts: dict[int, int] = {}
        for neuron in self.neurons:
            counts[neuron.layer] = counts.get(neuron.layer, 0) + 1
        return dict(sorted(counts.items()))

    def _repr_html_(self) -> str:
        """Jupyter's display: the refined neurons as a table, the picture of the bag's scores with them marked
        (:func:`knowledge_html`; no model runs)."""
        return knowledge_html(self)

    def __str__(self) -> str:
        what = f"{self.fact.subject} -> {self.fact.object}" if self.fact else "prompts"
        return f"KnowledgeNeurons({what}: {', '.join(str(n) for n in self.neurons) or 'none'})"


# ------------------------------------------------------------------------------------------------ display

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
