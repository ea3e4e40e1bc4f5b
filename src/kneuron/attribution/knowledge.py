"""One call from prompts (or a Fact) to knowledge neurons, with any attribution estimator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kneuron.attribution.estimators import (
    Estimator,
    IntegratedGradients,
    ScreenedIntegratedGradients,
    estimator_named,
    estimator_names,
)
from kneuron.attribution.ffn_norm import with_effective_norm
from kneuron.attribution.integrated_gradients import AlphaRule, Objective, integrated_gradients_many
from kneuron.attribution.selection import refine
from kneuron.attribution.types import KnowledgeNeurons, NeuronScores
from kneuron.errors import KneuronError
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
        KneuronError: an unknown name, a value that is not an estimator, or ``screen`` with another estimator.
    """
    if estimator is None or isinstance(estimator, str):
        name = IntegratedGradients.name if estimator is None else estimator
        chosen = estimator_named(name, steps=steps, objective=objective, alphas=alphas, **options)  # refuses unknowns
    elif isinstance(estimator, Estimator):
        chosen = estimator
    else:
        raise KneuronError(f"estimator must be a name ({', '.join(map(repr, estimator_names()))}) or an Estimator "
                           f"object; got {type(estimator).__name__}.")
    if screen is None:
        return chosen
    if type(chosen) is not IntegratedGradients:
        raise KneuronError(f"A screen (screen={screen!r}) picks the layers where exact integrated gradients runs, so "
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
            raise KneuronError(f"Fact {fact.id!r} has no templates, so no prompts to attribute.")
        return prompts, answer or fact.object, fact
    if isinstance(fact_or_prompts, (str, Prompt)):
        fact_or_prompts = [fact_or_prompts]
    if not fact_or_prompts:
        raise KneuronError("The bag of prompts is empty: give at least one prompt.")
    if not answer:
        raise KneuronError("Give the answer the prompts should lead to (e.g. answer='Paris').")
    as_prompt = Prompt.from_text if lm.kind == "causal" else Prompt.from_template
    return [p if isinstance(p, Prompt) else as_prompt(p) for p in fact_or_prompts], answer, None


def attribute_bag(
    lm: LanguageModel,
    fact_or_prompts: Fact | Sequence[str | Prompt],
    answer: str | None = None,
    *,
    steps: int = 20,
    objective: Objective = "prob",
    alphas: AlphaRule = "right",
    on_prompt: Callable[[int, NeuronScores], None] | None = None,
    estimator: Estimator | str | None = None,
    **options,
) -> list[NeuronScores]:
    """Scores for every prompt of a bag (``on_prompt`` reports each as it ends).

    ``estimator`` (default exact integrated gradients from ``steps``, ``objective`` and ``alphas``; see
    :func:`resolve_estimator`) decides how. With integrated gradients, prompts of the same shape share batches
    (see :func:`kneuron.attribution.integrated_gradients_many`); ``options`` (``layers``, ``memory_budget``,
    ``batch_rows``) go to it. An Estimator object takes ``layers`` only (it carries its other settings).
    """
    prompts, answer, _ = bag_of(lm, fact_or_prompts, answer)
    if estimator is None:  # the exact default, the same call as before estimators existed
        return integrated_gradients_many(lm, prompts, answer, steps=steps, objective=objective, alphas=alphas,
                                         on_prompt=on_prompt, **options)
    layers = options.pop("layers", None)
    if isinstance(estimator, Estimator) and options:
        raise KneuronError(f"{', '.join(sorted(options))} belong to the estimator: give them when making "
                           f"{type(estimator).__name__}(...), not to attribute_bag.")
    chosen = resolve_estimator(estimator, steps=steps, objective=objective, alphas=alphas, **options)
    return chosen.attribute(lm, prompts, answer, layers=layers, on_prompt=on_prompt)


def find_knowledge_neurons(
    lm: LanguageModel,
    fact_or_prompts: Fact | Sequence[str | Prompt],
    answer: str | None = None,
    *,
    threshold: float = 0.2,
    share: float | str = "adaptive",
    steps: int = 20,
    objective: Objective = "prob",
    alphas: AlphaRule = "right",
    on_prompt: Callable[[int, NeuronScores], None] | None = None,
    estimator: Estimator | str | None = None,
    **options,
) -> KnowledgeNeurons:
    """The knowledge neurons of a fact: attribute each prompt of its bag, then refine.

    ``estimator`` chooses the attribution (default: exact integrated gradients from ``steps``, ``objective`` and
    ``alphas``; a name such as "gxa", or an Estimator object, see :mod:`kneuron.attribution.estimators`). The
    result's ``params`` record the estimator's parameters (``estimator.params()``; ``"norm"``, the rule used on a
    model whose FFN outputs are normalised, see :mod:`kneuron.attribution.ffn_norm`), and for a
    :class:`ScreenedIntegratedGradients` the layers it chose (``"screen_layers"``, e.g. "2,5").

    Example:
        >>> kn = find_knowledge_neurons(lm, ["The capital of France is", "France's capital is"], "Paris")
        >>> print(kn)
        KnowledgeNeurons(prompts: L29.N1066, L21.N402, ...)
        >>> find_knowledge_neurons(lm, prompts, "Paris", estimator="gxa").params["estimator"]
        'gxa'
    """
    prompts, answer, fact = bag_of(lm, fact_or_prompts, answer)
    if estimator is not None and not isinstance(estimator, Estimator):
        layers = options.pop("layers", None)
        estimator = resolve_estimator(estimator, steps=steps, objective=objective, alphas=alphas, **options)
        options = {} if layers is None else {"layers": layers}
    bag = attribute_bag(lm, prompts, answer, steps=steps, objective=objective, alphas=alphas,
                        on_prompt=on_prompt, estimator=estimator, **options)
    found = refine(bag, share=share, threshold=threshold, fact=fact)
    made_by = (IntegratedGradients(steps, alphas, objective, norm=options.get("norm")) if estimator is None
               else estimator)
    found.params.update(made_by.params(), answer=answer)
    found.params = with_effective_norm(found.params, lm)  # the rule used on this model, or none to record
    if bag and bag[0].screen_layers is not None:  # a screened estimator: the layers it chose for this bag
        found.params[SCREEN_LAYERS] = layer_list(bag[0].screen_layers)
    found.scores = bag
    return found


def layer_list(layers: Sequence[int]) -> str:
    """Layers as a comma list ("2,5"; "" for none), how a fact's params keep a screen's chosen layers."""
    return ",".join(str(int(layer)) for layer in layers)


__all__ = ["SCREEN_LAYERS", "attribute_bag", "bag_of", "find_knowledge_neurons", "layer_list", "resolve_estimator"]
