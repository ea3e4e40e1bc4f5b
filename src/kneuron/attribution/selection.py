"""From scores to knowledge neurons: coarse neurons per prompt, refined neurons per fact.

Following the paper's official code: a prompt's coarse neurons score above ``threshold`` times
its maximum score (0.2); a fact's refined neurons are the coarse neurons that more than ``share``
of its prompts agree on. With ``share="adaptive"`` the share starts at 0.7 and moves by 0.05 until
the fact keeps between 2 and 5 neurons (or the share leaves (0, 1)).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch

from kneuron.attribution.types import KnowledgeNeurons, Neuron, NeuronScores
from kneuron.errors import InputError
from kneuron.facts.fact import Fact

ADAPTIVE_START, ADAPTIVE_STEP, ADAPTIVE_RANGE = 0.7, 0.05, (2, 5)


def coarse_neurons(scores: NeuronScores | torch.Tensor, threshold: float = 0.2) -> list[Neuron]:
    """Neurons whose score exceeds ``threshold`` x the prompt's maximum score, best first."""
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must lie in [0, 1] (a fraction of the maximum score); got {threshold}.")
    matrix = scores.scores if isinstance(scores, NeuronScores) else scores
    top = float(matrix.max())
    if top <= 0.0:
        return []
    layers, indices = torch.nonzero(matrix > threshold * top, as_tuple=True)
    found = [Neuron(int(layer), int(i), float(matrix[layer, i])) for layer, i in zip(layers, indices, strict=True)]
    return sorted(found, key=lambda n: -n.score)


def _shared(coarse: Sequence[Sequence[Neuron]], share: float) -> list[tuple[int, int]]:
    counts = Counter(n.key for prompt in coarse for n in {m.key: m for m in prompt}.values())
    need = share * len(coarse)
    return [key for key, count in counts.items() if count > need]


def refine(
    bag: Sequence[NeuronScores],
    share: float | str = "adaptive",
    threshold: float = 0.2,
    fact: Fact | None = None,
) -> KnowledgeNeurons:
    """The knowledge neurons of a fact from the scores of its bag of prompts.

    Args:
        bag: one NeuronScores per prompt of the fact.
        share: keep neurons that are coarse in more than this fraction of the prompts, or
            "adaptive" for the official code's rule (start 0.7, step 0.05, aim for 2 to 5 neurons).
        threshold: the coarse threshold, relative to each prompt's maximum score.
        fact: recorded in the result.

    Example:
        >>> kn = refine([integrated_gradients(lm, p, "Paris") for p in prompts])
        >>> print(kn.neurons)       # e.g. [L27.N1011, L25.N88]
    """
    if not bag:
        raise InputError("The bag of prompts is empty: give at least one prompt's scores to refine.")
    coarse = [coarse_neurons(scores, threshold) for scores in bag]
    params: dict = {"threshold": threshold, "share": share, "prompts": len(bag)}
    chosen, params["share_used"] = refined_keys(coarse, share)
    mean = torch.stack([s.scores for s in bag]).double().mean(0)  # float64: tiny scores must not underflow
    neurons = sorted((Neuron(layer, i, float(mean[layer, i])) for layer, i in chosen), key=lambda n: -n.score)
    params.update(steps=bag[0].steps, objective=bag[0].objective)
    warnings = [w for p, s in enumerate(bag) if (w := s.unlikely_warning(f"at prompt {p + 1}")) is not None]
    return KnowledgeNeurons(neurons, coarse, fact, params, warnings=warnings)


def refined_keys(coarse: Sequence[Sequence[Neuron]], share: float | str = "adaptive",
                 ) -> tuple[list[tuple[int, int]], float]:
    """The refinement step of :func:`refine` alone: ``(layer, index)`` of the neurons that more than ``share`` of
    the prompts' ``coarse`` sets hold (or the adaptive rule), and the share used. From stored coarse sets (an
    atlas keeps them per prompt) this gives the fact's refined set again, or that of a subset of its prompts."""
    if not coarse:
        raise InputError("There are no prompts' coarse neurons to refine: give at least one prompt's set.")
    if share == "adaptive":
        return _adaptive(coarse)
    if isinstance(share, (int, float)) and not isinstance(share, bool) and 0.0 <= share < 1.0:
        return _shared(coarse, float(share)), float(share)
    raise InputError(f"share must be a fraction in [0, 1) or 'adaptive'; got {share!r}.")


def _adaptive(coarse: Sequence[Sequence[Neuron]]) -> tuple[list[tuple[int, int]], float]:
    """The official code's rule: move the share by 0.05 from 0.7 until 2..5 neurons remain.

    When one step jumps across the whole range (too few to too many, or back), the larger set is kept:
    a fact with neurons is more useful than one without.
    """
    chosen, share, _ = share_walk(lambda share: _shared(coarse, share))
    return chosen, share


def share_walk(chosen_at: Callable[[float], list], share: float | str = "adaptive",
               ) -> tuple[list, float, list[float]]:
    """The refinement's choice of share, over any ``chosen_at(share)`` (the neurons kept at that share): the
    adaptive rule of :func:`refine` (a fixed share is itself), as ``(chosen, share used, every share looked at)``.
    The shares looked at are those at which a neuron's coarse count can change the result (two-stage-ig asks)."""
    if share != "adaptive":
        return chosen_at(float(share)), float(share), [float(share)]
    low, high = ADAPTIVE_RANGE
    share = ADAPTIVE_START
    visited = [share]
    chosen = chosen_at(share)
    while not low <= len(chosen) <= high:
        step = -ADAPTIVE_STEP if len(chosen) < low else ADAPTIVE_STEP
        new_share = round(share + step, 10)
        if not 0.0 < new_share < 1.0:
            break
        new = chosen_at(new_share)
        visited.append(new_share)
        if (len(chosen) < low and len(new) > high) or (len(chosen) > high and len(new) < low):
            if len(new) > high:
                chosen, share = new, new_share
            break
        chosen, share = new, new_share
    return chosen, share, visited


def activation_baseline(bag: Sequence[NeuronScores], count: int) -> list[Neuron]:
    """The paper's baseline: the ``count`` neurons with the largest mean activation over the bag."""
    if not bag:
        raise InputError("The bag of prompts is empty: give at least one prompt's scores.")
    if count <= 0:
        return []
    mean = torch.stack([s.activations for s in bag]).float().mean(0)
    values, indices = torch.topk(mean.flatten(), count)
    width = mean.shape[1]
    return [Neuron(int(i) // width, int(i) % width, float(v)) for v, i in zip(values, indices, strict=True)]
