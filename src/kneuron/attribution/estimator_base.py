"""What every attribution estimator shares: the :class:`Estimator` interface, the registry of estimators by name,
and how an estimator is made from a name or from the params an atlas recorded.

This module imports no estimator: each estimator's own module subclasses :class:`Estimator` and registers the
class with :func:`register_estimator`, and :mod:`kneuron.attribution.estimators` imports every built-in one once.
A new estimator is one module (its function and its class) plus one line there::

    @register_estimator
    class MyEstimator(Estimator):
        name = "mine"
        def params(self): return {"estimator": self.name}
        def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None): ...

An atlas stores ``estimator.params()`` and every later run rebuilds the estimator from them
(:func:`estimator_from_params`), so the params an estimator records are its identity: never rename or drop one.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from kneuron.attribution.types import NeuronScores
from kneuron.errors import FactError, InputError
from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Prompt
from kneuron.models.language_model import LanguageModel

PromptLike = Prompt | str | EncodedQuery
OnPrompt = Callable[[int, NeuronScores], None]
#: the estimator of params that name none (atlases made before estimators existed): exact integrated gradients
DEFAULT_ESTIMATOR = "ig"


def encode_prompts(lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None,
                   ) -> list[EncodedQuery]:
    """The prompts as encoded queries (a lone prompt is a bag of one); plain prompts need ``answer``."""
    if isinstance(prompts, (str, Prompt, EncodedQuery)):
        prompts = [prompts]
    queries = []
    for prompt in prompts:
        if isinstance(prompt, EncodedQuery):
            queries.append(prompt)
            continue
        if answer is None:
            raise FactError("Give the answer to attribute (the correct continuation or mask filler).")
        queries.append(encode(lm, prompt, answer))
    return queries


class Estimator(ABC):
    """What every estimator offers: a name, its parameters, and :meth:`attribute` (Captum's design: swap one
    estimator for another by changing one name).

    Every estimator takes its arguments in one order: the model, the prompts, the answer, then keywords.
    """

    #: the estimator's name on the command line (``--estimator NAME``) and in an atlas's params
    name: ClassVar[str]
    #: whether its scores have a zero baseline and a completeness gap (``NeuronScores.completeness_gap``; None when
    #: not): integrated gradients' scores of a layer sum to P(α=1) − P(α=0) as the steps grow, others' do not
    has_completeness: ClassVar[bool] = False
    #: whether :func:`estimator_named` (``--estimator NAME``) makes it from its name and plain settings; False for
    #: one that wraps another estimator (a screen), which only its own constructor or its params rebuild
    selectable: ClassVar[bool] = True
    #: whether ``kneuron study estimators`` compares it with exact IG by default (False for an opt-in variant of
    #: integrated gradients itself, e.g. two-stage-ig: name it with ``--estimators`` to compare it)
    compared_by_default: ClassVar[bool] = True
    #: whether its scores of a prompt depend on the other prompts of the call, so that a call must hold one fact's
    #: bag and nothing else (a screen that picks layers for the bag): a run then calls it once per fact
    per_bag: ClassVar[bool] = False

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters that decide the scores, with ``"estimator": name`` (plain JSON values)."""

    @abstractmethod
    def attribute(self, lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None = None,
                  *, layers: Sequence[int] | None = None, on_prompt: OnPrompt | None = None,
                  ) -> list[NeuronScores]:
        """Scores of every FFN neuron at each prompt's answer position, in the order of ``prompts``.

        Args:
            lm: the model (left exactly as it was).
            prompts: Prompts, texts (templates with [Y] for masked models, text to continue for causal ones) or
                EncodedQuery objects (then ``answer`` is not needed).
            answer: the correct answer.
            layers: score only these layers (the others score 0).
            on_prompt: called with (index, scores) as each prompt is done.
        """

    @classmethod
    def claims(cls, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` are this estimator's although their ``"estimator"`` names another (a wrapper that
        records its inner estimator's params beside its own, e.g. a screen's ``"screen"``); False by default."""
        return False

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Estimator:
        """The estimator ``params`` record (those its constructor takes; others, and None values, ignored)."""
        accepted = inspect.signature(cls.__init__).parameters
        return cls(**{key: value for key, value in params.items() if key in accepted and value is not None})

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.params().items() if key != "estimator")
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Estimator) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.params().items())))


#: every registered estimator by name, in the order of registration (the built-ins: ig, gxa, lpi, screened-ig)
ESTIMATORS: dict[str, type[Estimator]] = {}

E = TypeVar("E", bound=type[Estimator])


def register_estimator(cls: E) -> E:
    """Make ``cls`` known by its ``name`` (``estimator_named``, ``--estimator``, an atlas's params); returns it, so
    that it can decorate the class."""
    ESTIMATORS[cls.name] = cls
    return cls


def estimator_names() -> list[str]:
    """The names :func:`estimator_named` (``--estimator NAME``) takes, in the order of registration."""
    return [name for name, cls in ESTIMATORS.items() if cls.selectable]


def estimator_named(name: str, **params: Any) -> Estimator:
    """The estimator called ``name`` ("ig", "gxa", "lpi"), made with the ``params`` it takes (others ignored).

    Example:
        >>> estimator_named("ig", steps=20, alphas="gauss")   # IntegratedGradients(steps=20, alphas='gauss', ...)
    """
    cls = ESTIMATORS.get(name)
    if cls is None or not cls.selectable:
        raise InputError(f"Unknown estimator {name!r}: use {', '.join(map(repr, estimator_names()))}.")
    return cls.from_params(params)


def has_completeness(name: str) -> bool:
    """Whether the estimator called ``name`` defines a completeness gap (:attr:`Estimator.has_completeness`);
    True for a name not registered here (whatever its results hold is kept)."""
    cls = ESTIMATORS.get(name)
    return cls is None or cls.has_completeness


def estimator_from_params(params: Mapping[str, Any]) -> Estimator:
    """The estimator an atlas's (or a result's) params record; integrated gradients when they name none (atlases
    made before estimators existed). A wrapper claims its params first (:meth:`Estimator.claims`: a screened run
    records ``screen`` (K) and ``screen_estimator`` beside its integrated gradients' params)."""
    for cls in ESTIMATORS.values():
        if cls.claims(params):
            return cls.from_params(params)
    return estimator_named(params.get("estimator", DEFAULT_ESTIMATOR), **dict(params))


__all__ = ["DEFAULT_ESTIMATOR", "ESTIMATORS", "Estimator", "OnPrompt", "PromptLike", "encode_prompts",
           "estimator_from_params", "estimator_named", "estimator_names", "has_completeness", "register_estimator"]
