"""Facts in chunks: what one unit of a run's work is, how it is computed, and the executor interface.

A run (:func:`kneuron.store.run`) splits the atlas's computable facts (status pending or done, in registration
order) into consecutive chunks of ``chunk_facts``. One chunk is computed as one call of
``IntegratedGradients.attribute`` over the prompts of all its facts, so prompts of the same shape from
different facts share integrated-gradients batches. Each prompt's scores are those it gets alone up to float rounding (a
batch's composition changes the order of the sums in its matrix products), so a fact's stored bytes depend on
its chunk mates. For that reason the chunks depend on the atlas's fact order only, never on which facts are
done or on worker timing: a resumed run recomputes every chunk that still has a pending fact as a whole (and
stores only its pending facts), and any executor (local, or Ray actors in :mod:`kneuron.parallel`) writes the
same atlas byte for byte.

That is the default, exact integrated gradients. The estimator is the one the run's params record
(:func:`~kneuron.attribution.estimators.estimator_from_params`, so a Ray worker builds the same one): another
estimator attributes the chunk's prompts in one ``attribute`` call, and a screened run screens each fact on its
own (the layers it keeps depend on that fact's bag alone), see :func:`compute_chunk`.

Layering: an executor is anything with the :class:`Executor` interface (``name``, ``map``). The store defines
it and the local one; :mod:`kneuron.parallel` (above the store) adds the Ray one. ``store.run`` takes an
executor object, so the store never imports ``parallel``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kneuron.attribution.estimators import estimator_from_params
from kneuron.attribution.knowledge import SCREEN_LAYERS, layer_list
from kneuron.attribution.selection import activation_baseline, refine
from kneuron.attribution.types import KnowledgeNeurons, Neuron, NeuronScores
from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Fact
from kneuron.facts.probabilities import answer_probability_many
from kneuron.models.language_model import LanguageModel

#: facts per chunk by default (see the README's "Running a whole dataset" for the measurement behind it)
DEFAULT_CHUNK_FACTS = 16


@dataclass
class Chunk:
    """One unit of work: ``facts`` (all computed together, in this order) and the ids of those to store."""

    number: int
    facts: list[Fact]
    store: list[str]


@dataclass
class FactResult:
    """Everything :meth:`Atlas.store_fact` writes for one fact."""

    fact_id: str
    kn: KnowledgeNeurons
    probabilities: list[tuple[float, int]]
    baseline: list[Neuron]
    compute_seconds: float


@dataclass
class ChunkResult:
    """The stored facts of a chunk, with who computed it (``worker``) and how long it took."""

    number: int
    results: list[FactResult]
    seconds: float
    worker: str = "local"
    extra: dict[str, Any] = field(default_factory=dict)
    #: prompts attributed for it (what the run's progress counts when the chunk arrives)
    prompts: int = 0


#: called with no argument as each prompt of a chunk is attributed (the run's progress inside a chunk)
OnChunkPrompt = Callable[[], None]


class Executor(Protocol):
    """What runs chunks. ``map`` yields each chunk's result exactly once, in any order; it holds at most a
    bounded number of finished chunks (the caller writes each before asking for the next). It may call
    ``on_prompt()`` as each prompt of a chunk is attributed (in the caller's process; the caller replaces those
    counts by the chunk's :attr:`ChunkResult.prompts` when the result arrives), or never."""

    name: str

    def map(self, chunks: Iterable[Chunk], params: dict[str, Any], identity: dict[str, Any],
            on_prompt: OnChunkPrompt | None = None) -> Iterator[ChunkResult]: ...


def plan_chunks(rows: Sequence[dict[str, Any]], todo: set[str], size: int) -> list[tuple[int, list[str], list[str]]]:
    """``(number, ids of the chunk, ids to store)`` for every chunk holding a fact of ``todo``.

    ``rows`` are the atlas's fact rows in registration order; only pending and done facts are computable and
    they are cut into consecutive chunks of ``size``, so a chunk's composition depends on that order alone.
    """
    computable = [row["id"] for row in rows if row["status"] in ("pending", "done")]
    planned = []
    for number, start in enumerate(range(0, len(computable), size)):
        ids = computable[start:start + size]
        wanted = [i for i in ids if i in todo]
        if wanted:
            planned.append((number, ids, wanted))
    return planned


def compute_chunk(lm: LanguageModel, chunk: Chunk, params: dict[str, Any],
                  memory_budget: int | None = None, on_prompt: OnChunkPrompt | None = None) -> ChunkResult:
    """Attribute the chunk's facts with the estimator the params record, then refine each fact and compute its
    prompts' probabilities and its activation baseline.

    Exact integrated gradients (the default) attributes every prompt of the chunk in one
    ``IntegratedGradients.attribute`` call (prompts of the same shape share batches across facts); another
    estimator attributes the chunk's prompts in one ``estimator.attribute`` call; one whose rule reads the whole
    bag (``Estimator.per_bag``: a screened run, two-stage-ig) is called once per fact to be stored (its prompts are
    one bag), and the layers it computed are recorded in the fact's params (``"screen_layers"``, a comma list).
    ``on_prompt()`` is called as the estimator finishes each prompt (it does not change the scores).

    Each stored fact's prompts get their answer probabilities and ranks in one padded batch
    (:func:`~kneuron.facts.probabilities.answer_probability_many`), a batch of that fact's prompts alone, so that
    the stored values depend on the fact only (not on which chunk mates a resumed run still stores).
    """
    started = time.perf_counter()
    report = None if on_prompt is None else (lambda index, scores: on_prompt())
    estimator = estimator_from_params({**params, "memory_budget": memory_budget})
    bags: dict[int, list[NeuronScores]] = {}
    seconds: dict[int, float] = {}
    extra: dict[int, dict[str, Any]] = {}
    wanted = set(chunk.store)
    encoded: dict[int, list[EncodedQuery]] = {}
    if estimator.per_bag:
        for number, fact in enumerate(chunk.facts):
            if fact.id in wanted:
                start = time.perf_counter()
                encoded[number] = [encode(lm, p, fact.object) for p in fact.prompts()]
                bags[number] = estimator.attribute(lm, encoded[number], on_prompt=report)
                computed = {layer for scores in bags[number] for layer in scores.screen_layers or ()}
                extra[number] = {SCREEN_LAYERS: layer_list(sorted(computed))}
                seconds[number] = time.perf_counter() - start
    else:
        queries, owners = [], []
        for number, fact in enumerate(chunk.facts):
            encoded[number] = [encode(lm, prompt, fact.object) for prompt in fact.prompts()]
            queries += encoded[number]
            owners += [number] * len(encoded[number])
        # exact IG's attribute is the one batched call over the chunk that was made before estimators existed
        scores = estimator.attribute(lm, queries, on_prompt=report)
        per_prompt = (time.perf_counter() - started) / max(len(queries), 1)
        for number in range(len(chunk.facts)):
            bags[number] = [s for s, owner in zip(scores, owners, strict=True) if owner == number]
            seconds[number] = per_prompt * len(bags[number])
    made_by = estimator.params()
    results = []
    for number, fact in enumerate(chunk.facts):
        if fact.id not in wanted:
            continue
        start = time.perf_counter()
        bag = bags[number]
        for one in bag:
            one.answer = fact.object
        kn = refine(bag, share=params["share"], threshold=params["threshold"], fact=fact)
        kn.params.update(made_by, answer=fact.object, **extra.get(number, {}))
        kn.scores = bag
        probabilities = [(p.probability, p.rank) for p in answer_probability_many(lm, encoded[number])]
        baseline = activation_baseline(bag, len(kn.neurons))
        results.append(FactResult(fact.id, kn, probabilities, baseline,
                                  seconds[number] + time.perf_counter() - start))
    prompts = sum(len(bag) for bag in bags.values())
    return ChunkResult(chunk.number, results, time.perf_counter() - started, prompts=prompts)


class LocalExecutor:
    """Chunks computed one after another in this process, with the driver's model (the default)."""

    name = "local"

    def __init__(self, lm: LanguageModel, memory_budget: int | None = None) -> None:
        self.lm = lm
        self.memory_budget = memory_budget

    def map(self, chunks: Iterable[Chunk], params: dict[str, Any], identity: dict[str, Any],
            on_prompt: OnChunkPrompt | None = None) -> Iterator[ChunkResult]:
        for chunk in chunks:
            yield compute_chunk(self.lm, chunk, params, self.memory_budget, on_prompt)


def chunk_prompts(chunk: Chunk, params: dict[str, Any]) -> int:
    """How many prompts :func:`compute_chunk` attributes for ``chunk``: every fact's (they share batches), or only
    the stored facts' for an estimator that takes one fact's bag per call (each is screened on its own)."""
    screened = estimator_from_params(params).per_bag
    return sum(len(fact.prompts()) for fact in chunk.facts if not screened or fact.id in chunk.store)


def query_shape(lm: LanguageModel, query) -> tuple[int, int, int]:
    """:func:`~kneuron.attribution.step_rows.shape_key` of the query's plan, from its tokens alone (no forward
    pass): a causal model's rows read the tokens from the attributed position on, after a cache of the tokens
    before it; a masked model's rows read the whole input."""
    ids, position = len(query.input_ids), query.position
    if lm.kind == "causal":
        return ids - position, position, len(query.answer_ids)
    return ids, 0, len(query.answer_ids)


def same_shape_shares(lm: LanguageModel, facts: Sequence[Fact], chunk_facts: int) -> dict[str, float]:
    """The share of prompts that have a same-shape partner (and so share IG batches) within their fact, and
    within their chunk of ``chunk_facts`` facts: ``{"within_fact", "within_chunk", "prompts"}``."""
    from collections import Counter

    keys = [[query_shape(lm, encode(lm, prompt, fact.object)) for prompt in fact.prompts()] for fact in facts]
    total = sum(len(k) for k in keys)
    in_fact = sum(count for k in keys for count in Counter(k).values() if count > 1)
    in_chunk = 0
    for start in range(0, len(keys), chunk_facts):
        counts = Counter(key for k in keys[start:start + chunk_facts] for key in k)
        in_chunk += sum(count for count in counts.values() if count > 1)
    return {"within_fact": in_fact / total if total else 0.0, "within_chunk": in_chunk / total if total else 0.0,
            "prompts": float(total)}
