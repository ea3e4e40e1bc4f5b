"""One call from prompts (or a Fact) to knowledge neurons."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kneuron.attribution.integrated_gradients import AlphaRule, Objective, integrated_gradients_many
from kneuron.attribution.selection import refine
from kneuron.attribution.types import KnowledgeNeurons, NeuronScores
from kneuron.errors import KneuronError
from kneuron.facts.fact import Fact, Prompt
from kneuron.models.language_model import LanguageModel


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
    **options,
) -> list[NeuronScores]:
    """Integrated-gradients scores for every prompt of a bag (``on_prompt`` reports each as it ends).

    Prompts of the same shape share batches (see :func:`kneuron.attribution.integrated_gradients_many`).
    """
    prompts, answer, _ = bag_of(lm, fact_or_prompts, answer)
    return integrated_gradients_many(lm, prompts, answer, steps=steps, objective=objective, alphas=alphas,
                                     on_prompt=on_prompt, **options)


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
    **options,
) -> KnowledgeNeurons:
    """The knowledge neurons of a fact: attribute each prompt of its bag, then refine.

    Example:
        >>> kn = find_knowledge_neurons(lm, ["The capital of France is", "France's capital is"], "Paris")
        >>> print(kn)
        KnowledgeNeurons(prompts: L29.N1066, L21.N402, ...)
    """
    prompts, answer, fact = bag_of(lm, fact_or_prompts, answer)
    bag = attribute_bag(lm, prompts, answer, steps=steps, objective=objective, alphas=alphas,
                        on_prompt=on_prompt, **options)
    found = refine(bag, share=share, threshold=threshold, fact=fact)
    found.params.update(alphas=alphas, answer=answer)
    found.scores = bag
    return found
