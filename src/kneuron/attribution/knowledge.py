"""One call from prompts (or a Fact) to knowledge neurons, with any attribution estimator."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from kneuron.attribution.estimator_base import encode_prompts
from kneuron.attribution.estimators import (
    ESTIMATORS,
    Estimator,
    IntegratedGradients,
    ScreenedIntegratedGradients,
    estimator_from_params,
    estimator_named,
    estimator_names,
)
from kneuron.attribution.ffn_norm import with_effective_norm
from kneuron.attribution.health import check_finite
from kneuron.attribution.integrated_gradients import AlphaRule, Objective
from kneuron.attribution.selection import refine
from kneuron.attribution.types import KnowledgeNeurons, NeuronScores
from kneuron.errors import FactError, InputError
from kneuron.facts.fact import Fact, Prompt
from kneuron.models.language_model import LanguageModel

#: how a fact's params record the layers a screened estimator chose (store_fact keeps scalar params only)
SCREEN_LAYERS = "screen_layers"


def resolve_estimator(estimator: Estimator | str | None = None, *, steps: int = 20, objective: Objective = "prob",
                      alphas: AlphaRule = "right", screen: int | None = None, **options: Any) -> Estimator:
    """The estimator a call asks for: ``None`` is exact integrated gradients from ``steps``, ``objective`` and
    ``alphas`` (the default, as before estimators existed); a name ("ig", "gxa", ...) is made with those keywords
    (each takes the ones it uses); an :class:`Estimator` is used as it is (it brings its own settings).

    ``screen=K`` wraps integrated gradients in :class:`ScreenedIntegratedGradients`: a cheap estimator (gradient x
    activation) picks each fact's K layers, and exact integrated gradients runs only there.

    Raises:
        InputError: an unknown name, a value that is not an estimator, or ``screen`` with another estimator.
    """
    if estimator is None or isinstance(estimator, str):
        name = IntegratedGradients.name if estimator is None else estimator
        chosen = estimator_named(name, steps=steps, objective=objective, alphas=alphas, **options)  # refuses unknowns
    elif isinstance(estimator, Estimator):
        chosen = estimator
    else:
        raise InputError(f"estimator must be a name ({', '.join(map(repr, estimator_names()))}) or an Estimator "
                         f"object; got {type(estimator).__name__}.")
    if screen is None:
        return chosen
    if type(chosen) is not IntegratedGradients:
        raise InputError(f"A screen (screen={screen!r}) picks the layers where exact integrated gradients runs, so "
                         f"it needs the 'ig' estimator, not {chosen.params()['estimator']!r}: drop the screen or "
                         "use estimator 'ig'.")
    return ScreenedIntegratedGradients(screen, ig=chosen)


def bag_of(lm: LanguageModel, fact_or_prompts: Fact | Sequence[str | Prompt], answer: str | None,
           ) -> tuple[list[Prompt], str, Fact | None]:
    """The prompts, answer and fact behind either a Fact or loose prompts with an answer."""
    if isinstance(fact_or_prompts, Fact):
        fact = fact_or_prompts
        prompts = fact.prompts()
        if not prompts:
            raise FactError(f"Fact {fact.id!r} has no templates, so no prompts to attribute.")
        return prompts, answer or fact.object, fact
    if isinstance(fact_or_prompts, (str, Prompt)):
        fact_or_prompts = [fact_or_prompts]
    if not fact_or_prompts:
        raise InputError("The bag of prompts is empty: give at least one prompt.")
    if not answer:
        raise FactError("Give the answer the prompts should lead to (e.g. answer='Paris').")
    as_prompt = Prompt.from_text if lm.kind == "causal" else Prompt.from_template
    return [p if isinstance(p, Prompt) else as_prompt(p) for p in fact_or_prompts], answer, None


def _estimator_for_call(where: str, estimator: Estimator | str | None, settings: dict[str, Any]) -> Estimator:
    """The estimator a call of ``where`` asks for, as it always was: ``None`` is exact integrated gradients made
    from the ``settings`` (default 20 steps, "right", "prob"), a name is made with them, an Estimator object is
    used as it is (steps, objective and alphas beside it are ignored, as they always were; other settings are
    refused). Settings given at all are the deprecated route: a FutureWarning names the replacement."""
    given = {key: value for key, value in settings.items() if value is not None}
    if given:
        if isinstance(estimator, Estimator):
            target = type(estimator).__name__
        else:
            cls = ESTIMATORS.get(estimator or IntegratedGradients.name)
            target = cls.__name__ if cls is not None else "IntegratedGradients"
        warnings.warn(f"{where}(..., {', '.join(f'{key}=' for key in given)}) is deprecated: pass "
                      f"estimator={target}({', '.join(f'{key}=...' for key in given)})", FutureWarning, stacklevel=3)
    if isinstance(estimator, Estimator):
        options = {key: value for key, value in given.items() if key not in ("steps", "objective", "alphas")}
        if options:
            raise InputError(f"{', '.join(sorted(options))} belong to the estimator: give them when making "
                             f"{type(estimator).__name__}(...), not to {where}.")
        return estimator
    named = {"steps": 20, "objective": "prob", "alphas": "right", **given}
    if estimator is None:  # the exact default
        return IntegratedGradients(**named)
    return resolve_estimator(estimator, **named)


def attribute_bag(
    lm: LanguageModel,
    fact_or_prompts: Fact | Sequence[str | Prompt],
    answer: str | None = None,
    *,
    estimator: Estimator | str | None = None,
    layers: Sequence[int] | None = None,
    on_prompt: Callable[[int, NeuronScores], None] | None = None,
    steps: int | None = None,
    objective: Objective | None = None,
    alphas: AlphaRule | None = None,
    **settings: Any,
) -> list[NeuronScores]:
    """Scores for every prompt of a bag: ``estimator.attribute(lm, prompts, answer, layers=, on_prompt=)``
    (``on_prompt`` reports each prompt as it ends).

    ``estimator``: an :class:`Estimator` (default ``IntegratedGradients()``, exact, 20 steps) or a registered
    name ("ig", "gxa", ...). With integrated gradients, prompts of the same shape share batches.

    Deprecated: the estimator's settings as keywords here (``steps``, ``objective``, ``alphas``,
    ``memory_budget``, ``batch_rows``, ``norm``): they still work as before, with a FutureWarning; give them to
    the estimator instead (``estimator=IntegratedGradients(steps=...)``).
    """
    prompts, answer, _ = bag_of(lm, fact_or_prompts, answer)
    chosen = _estimator_for_call("attribute_bag", estimator,
                                 {"steps": steps, "objective": objective, "alphas": alphas, **settings})
    return chosen.attribute(lm, prompts, answer, layers=layers, on_prompt=on_prompt)


#: what an estimator's ``threshold`` and ``share`` params are, named in a refusal
AIMS = {"threshold": "coarse threshold", "share": "refinement share"}


def find_knowledge_neurons(
    lm: LanguageModel,
    fact_or_prompts: Fact | Sequence[str | Prompt],
    answer: str | None = None,
    *,
    estimator: Estimator | str | None = None,
    threshold: float = 0.2,
    share: float | str = "adaptive",
    layers: Sequence[int] | None = None,
    on_prompt: Callable[[int, NeuronScores], None] | None = None,
    steps: int | None = None,
    objective: Objective | None = None,
    alphas: AlphaRule | None = None,
    **settings: Any,
) -> KnowledgeNeurons:
    """The knowledge neurons of a fact: attribute each prompt of its bag with ``estimator``, then refine.

    ``estimator`` chooses the attribution: an :class:`Estimator` object (default ``IntegratedGradients()``, exact,
    20 steps; see :mod:`kneuron.attribution.estimators`) or a registered name ("gxa", ...). The result's
    ``params`` record the estimator's parameters (``estimator.params()``; ``"norm"``, the rule used on a model
    whose FFN outputs are normalised, see :mod:`kneuron.attribution.ffn_norm`), and for a
    :class:`ScreenedIntegratedGradients` the layers it chose (``"screen_layers"``, e.g. "2,5").

    Deprecated: the estimator's settings as keywords here (``steps``, ``objective``, ``alphas``,
    ``memory_budget``, ``batch_rows``, ``norm``): they still work as before, with a FutureWarning; pass
    ``estimator=IntegratedGradients(steps=...)`` instead.

    Example:
        >>> kn = find_knowledge_neurons(lm, ["The capital of France is", "France's capital is"], "Paris",
        ...                             estimator=IntegratedGradients(steps=20))
        >>> print(kn)
        KnowledgeNeurons(prompts: L29.N1066, L21.N402, ...)
        >>> find_knowledge_neurons(lm, prompts, "Paris", estimator=GradientTimesActivation()).params["estimator"]
        'gxa'
    """
    prompts, answer, fact = bag_of(lm, fact_or_prompts, answer)
    made_by = _estimator_for_call("find_knowledge_neurons", estimator,
                                  {"steps": steps, "objective": objective, "alphas": alphas, **settings})
    # an estimator that aims at the refinement (two-stage-ig): its threshold and share must be the call's
    wanted = {"threshold": float(threshold), "share": share if share == "adaptive" else float(share)}
    aims_at = {key: made_by.params()[key] for key in wanted if key in made_by.params()}
    if any(value != wanted[key] for key, value in aims_at.items()):
        if not isinstance(estimator, str):
            key = next(key for key, value in aims_at.items() if value != wanted[key])
            raise InputError(f"{type(made_by).__name__} aims at the {AIMS[key]} {aims_at[key]}, not at "
                             f"{key}={wanted[key]}: make it with {key}={wanted[key]!r}.")
        made_by = estimator_from_params({**made_by.params(), **{key: wanted[key] for key in aims_at}})
    check_finite(lm, encode_prompts(lm, prompts, answer))  # a damaged model is refused, naming where
    bag = made_by.attribute(lm, prompts, answer, layers=layers, on_prompt=on_prompt)
    found = refine(bag, share=share, threshold=threshold, fact=fact)
    found.params.update(made_by.params(), answer=answer)
    found.params = with_effective_norm(found.params, lm)  # the rule used on this model, or none to record
    if bag and bag[0].screen_layers is not None:  # a screened estimator: the layers it computed for this bag
        found.params[SCREEN_LAYERS] = layer_list(sorted({layer for s in bag for layer in s.screen_layers or ()}))
    found.scores = bag
    return found


def layer_list(layers: Sequence[int]) -> str:
    """Layers as a comma list ("2,5"; "" for none), how a fact's params keep a screen's chosen layers."""
    return ",".join(str(int(layer)) for layer in layers)


__all__ = ["SCREEN_LAYERS", "attribute_bag", "bag_of", "find_knowledge_neurons", "layer_list", "resolve_estimator"]
