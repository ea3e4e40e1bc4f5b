"""Plain data produced by attribution: per-prompt neuron scores and a fact's knowledge neurons."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

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
        (:func:`kneuron.attribution.display.scores_html`; no model runs)."""
        from kneuron.attribution.display import scores_html

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
        (:func:`kneuron.attribution.display.knowledge_html`; no model runs)."""
        from kneuron.attribution.display import knowledge_html

        return knowledge_html(self)

    def __str__(self) -> str:
        what = f"{self.fact.subject} -> {self.fact.object}" if self.fact else "prompts"
        return f"KnowledgeNeurons({what}: {', '.join(str(n) for n in self.neurons) or 'none'})"
