"""A run: every fact of a set through attribution into an atlas, resumable at any moment.

For each fact :func:`run` computes the answer probability and rank of each prompt, the integrated-gradients
scores of each prompt, the coarse and refined knowledge neurons, and the activation-baseline neurons (as many
as refined), and writes them in one transaction. A run killed at any moment (SIGKILL included) loses at most
the fact it was computing; started again with the same arguments it carries on and ends with exactly the
atlas an uninterrupted run writes (each fact's results depend only on the model, the fact and the parameters).
A finished run started again computes nothing.

Example:
    >>> summary = run(kneuron.load(), builtin_facts(["capital"]), "runs/capital.sqlite", limit_per_relation=5)
    >>> summary.computed, summary.dropped
    (5, {'capital': 1})
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kneuron.attribution.estimators import Estimator, estimator_from_params, estimator_names
from kneuron.attribution.ffn_norm import check_norm, with_effective_norm
from kneuron.attribution.health import check_finite
from kneuron.attribution.integrated_gradients import ALPHA_RULES
from kneuron.attribution.knowledge import AIMS, resolve_estimator
from kneuron.errors import AtlasError, FactError, InputError, KneuronError
from kneuron.facts.encoding import encode
from kneuron.facts.fact import Fact
from kneuron.facts.known import answer_ranks, known_share
from kneuron.models.language_model import LanguageModel
from kneuron.store.atlas import Atlas, model_identity
from kneuron.store.chunks import DEFAULT_CHUNK_FACTS, Chunk, Executor, LocalExecutor, chunk_prompts, plan_chunks
from kneuron.store.files import damaged as files_damaged
from kneuron.store.scores import KEEP_SCORES, keep_params


@dataclass
class RunSummary:
    """What a call of :func:`run` did.

    Attributes:
        path: the atlas.
        selected: facts of this call's selection in the atlas (any status).
        computed: facts computed by this call.
        already_done: facts of the selection that an earlier call had computed.
        dropped: per relation, facts of the selection the model does not know (not computed).
        invalid: fact id -> why its prompts cannot be used with this model.
        compute_seconds, write_seconds: time spent computing and writing the facts of this call.
        seconds: wall time of the call (model fingerprint, known filter and all).
    """

    path: Path
    selected: int = 0
    computed: int = 0
    already_done: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    compute_seconds: float = 0.0
    write_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def store_overhead(self) -> float:
        """Writing time as a share of computing time."""
        return self.write_seconds / self.compute_seconds if self.compute_seconds else 0.0


def run_params(*, steps: int, threshold: float, share: float | str, objective: str, alphas: str,
               known_only: bool, top: int, min_share: float, chunk_facts: int = DEFAULT_CHUNK_FACTS,
               keep_scores: str = "full", estimator: Estimator | str | None = None, screen: int | None = None,
               norm: str | None = None) -> dict[str, Any]:
    """The parameters that make an atlas's identity, checked the way attribution would check them.

    ``chunk_facts`` is part of it because a chunk's facts share batches (their scores differ from a run with
    other chunks by float rounding, see :mod:`kneuron.store.chunks`); ``keep_scores`` because it decides what
    the prompts table holds (see :mod:`kneuron.store.scores`). The estimator (default exact integrated gradients
    from ``steps``, ``objective`` and ``alphas``; see :func:`kneuron.attribution.knowledge.resolve_estimator`)
    adds its own params (``estimator.params()``: ``"estimator"`` and, for integrated gradients, ``steps``,
    ``alphas`` and ``objective``; a screened run also ``"screen"`` (K) and ``"screen_estimator"``). Only the
    estimator's params are recorded, so an atlas of gradient x activation has no ``steps``.
    """
    if chunk_facts < 1:
        raise InputError(f"chunk_facts must be at least 1; got {chunk_facts}.")
    if keep_scores not in KEEP_SCORES:
        raise InputError(f"Unknown keep_scores {keep_scores!r}: use {', '.join(map(repr, KEEP_SCORES))}.")
    if steps < 1:
        raise InputError(f"steps must be at least 1; got {steps}.")
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must lie in [0, 1] (a fraction of the maximum score); got {threshold}.")
    if share != "adaptive" and not (isinstance(share, (int, float)) and 0.0 <= share < 1.0):
        raise InputError(f"share must be a fraction in [0, 1) or 'adaptive'; got {share!r}.")
    if objective not in ("prob", "logprob"):
        raise InputError(f"Unknown objective {objective!r}: use 'prob' or 'logprob'.")
    if alphas not in ALPHA_RULES:
        raise InputError(f"Unknown alpha rule {alphas!r}: use {', '.join(map(repr, ALPHA_RULES))}.")
    if top < 1:
        raise InputError(f"top must be at least 1; got {top}.")
    if norm is not None and isinstance(estimator, Estimator) and getattr(estimator, "norm", None) != norm:
        raise InputError(f"norm={norm!r} belongs to the estimator: give it when making "
                         f"{type(estimator).__name__}(..., norm={norm!r}), or pass the estimator's name.")
    chosen = resolve_estimator(estimator, steps=int(steps), objective=objective, alphas=alphas,  # type: ignore[arg-type]
                               screen=screen, threshold=float(threshold),  # an estimator that aims at them
                               share=share if share == "adaptive" else float(share),  # takes them
                               **({} if norm is None else {"norm": check_norm(norm)}))
    wanted = {"threshold": float(threshold), "share": share if share == "adaptive" else float(share)}
    for key, value in wanted.items():
        aims_at = chosen.params().get(key)
        if aims_at is not None and aims_at != value:
            raise InputError(f"{type(chosen).__name__} aims at the {AIMS[key]} {aims_at} but the run's is "
                             f"{value}: give the estimator {key}={value!r}, or the run {key}={aims_at!r}.")
    if estimator_from_params(chosen.params()) != chosen:  # what every chunk (and Ray worker) rebuilds it from
        raise InputError(f"{type(chosen).__name__} is not in the estimator registry, so a run cannot rebuild it "
                         "from the atlas's params: register it with kneuron.attribution.estimators."
                         "register_estimator, or use one of " + ", ".join(map(repr, estimator_names())) + ".")
    return {**chosen.params(), "threshold": float(threshold),
            "share": share if share == "adaptive" else float(share), "known_only": bool(known_only),
            "top": int(top), "min_share": float(min_share), "chunk_facts": int(chunk_facts),
            **keep_params(keep_scores)}


def _unique(facts: Sequence[Fact]) -> list[Fact]:
    """The facts once each; the same id with different content is an error."""
    seen: dict[str, Fact] = {}
    for fact in facts:
        other = seen.get(fact.id)
        if other is None:
            seen[fact.id] = fact
        elif other != fact:
            raise FactError(f"Two different facts share the id {fact.id!r} ({other.subject} -> {other.object} and "
                            f"{fact.subject} -> {fact.object}); give them distinct ids.")
    return list(seen.values())


def check_facts(facts: Sequence[Fact]) -> None:
    """Refuse, before anything is written, a fact no model can read: a subject or object holding a placeholder
    ([X] or [Y]), or a template the facts API refuses (:meth:`Fact.prompts`). A fact only this model cannot read
    is not an error: the run records it as 'invalid'.

    Raises:
        FactError: naming the first such fact.
    """
    from kneuron.facts.fact import check_filler

    for fact in facts:
        for part, text in (("subject", fact.subject), ("object", fact.object)):
            check_filler(text, part, f"{fact.id} ({fact.subject!r} -> {fact.object!r})")  # Fact's own check
        try:
            fact.prompts()
        except FactError as exc:
            raise FactError(f"Fact {fact.id!r} cannot make its prompts: {exc}") from None


@contextlib.contextmanager
def _discarded_on_failure(atlas: Atlas):
    """On any failure, delete the atlas this run created if it holds no done fact yet (nothing a rerun would
    not redo), so that a run failing before its first fact leaves no atlas behind."""
    from kneuron.store import files

    try:
        yield
    except BaseException:
        if atlas.created:
            atlas.close()  # releases the run lock, which removing the file takes
            done = 1  # unless the atlas says otherwise, keep it
            with contextlib.suppress(KneuronError, OSError), Atlas.open(atlas.path, read_only=True) as check:
                done = check._rows("SELECT count(*) AS n FROM facts WHERE status = 'done'")[0]["n"]
            with contextlib.suppress(KneuronError, OSError):
                if not done:
                    files.remove(atlas.path)
        raise


def _same(fact: Fact, row: dict[str, Any], atlas: Atlas) -> bool:
    templates = atlas.stored_json(row["templates"], f"the templates of {row['id']!r}")
    if not isinstance(templates, list):
        raise files_damaged(atlas.path, f"the templates of {row['id']!r} are {templates!r}, not a list")
    return (row["relation"], row["subject"], row["object"], tuple(templates)) == (
        fact.relation, fact.subject, fact.object, tuple(fact.templates))


def classify(lm: LanguageModel, facts: Sequence[Fact], *, known_only: bool, top: int, min_share: float,
             ) -> list[dict[str, Any]]:
    """The known-filter outcome of each fact: ``{"status", "known", "known_share", "ranks", "note"}``.

    A fact whose prompts the model cannot read (no templates, an answer outside the vocabulary of a masked
    model, nothing before [Y] for a causal model) is 'invalid' with the reason in ``note``.
    """
    outcomes: list[dict[str, Any]] = []
    valid: list[Fact] = []
    for fact in facts:
        note = None
        if not fact.templates:
            note = "no templates"
        else:
            try:
                for prompt in fact.prompts():
                    encode(lm, prompt, fact.object)
            except FactError as exc:
                note = str(exc)
        outcomes.append({"status": "invalid", "note": note} if note else {})
        if not note:
            valid.append(fact)
    ranks = iter(answer_ranks(lm, valid)) if valid else iter(())
    for outcome in outcomes:
        if outcome:
            continue
        fact_ranks = next(ranks)
        shared = known_share(fact_ranks, top)
        known = shared > min_share
        outcome.update(status="pending" if known or not known_only else "dropped", known=int(known),
                       known_share=shared, ranks=fact_ranks, note=None)
    return outcomes


def _register(atlas: Atlas, lm: LanguageModel, facts: list[Fact], *, known_only: bool, top: int,
              min_share: float, limit_per_relation: int | None) -> None:
    """Add the selection's new facts to the atlas with their known-filter outcome (one transaction).

    With ``limit_per_relation`` a relation takes facts in the given order until it has that many to compute
    (pending or done), counting those already in the atlas; facts after that are left out.
    """
    existing = {row["id"]: row for row in atlas.fact_rows(status=None)}
    for fact in facts:
        row = existing.get(fact.id)
        if row is not None and not _same(fact, row, atlas):
            raise AtlasError(
                f"Fact {fact.id!r} in {atlas.path} differs from the one given ({row['subject']} -> {row['object']}, "
                f"templates {row['templates']}); an atlas keeps one version of each fact. Start a new atlas: "
                "write to another file (--out) or replace it (--overwrite)."
            )
    order = {fact.id: i for i, fact in enumerate(facts)}
    candidates: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        if fact.id not in existing:
            candidates[fact.relation].append(fact)
    chosen: list[tuple[Fact, dict[str, Any]]] = []
    if limit_per_relation is None:
        flat = [fact for fact in facts if fact.id not in existing]
        chosen = list(zip(flat, classify(lm, flat, known_only=known_only, top=top, min_share=min_share),
                          strict=True))
    else:
        have = Counter(row["relation"] for row in existing.values() if row["status"] in ("pending", "done"))
        for relation, pool in candidates.items():
            need, start = limit_per_relation - have[relation], 0
            while need > 0 and start < len(pool):
                chunk = pool[start:start + max(2 * need, 8)]
                start += len(chunk)
                for fact, outcome in zip(chunk, classify(lm, chunk, known_only=known_only, top=top,
                                                         min_share=min_share), strict=True):
                    if need <= 0:
                        break
                    chosen.append((fact, outcome))
                    need -= outcome["status"] == "pending"
    chosen.sort(key=lambda entry: order[entry[0].id])
    atlas.register_facts(chosen)


def run(
    lm: LanguageModel,
    facts: Sequence[Fact],
    atlas_path: str | Path,
    *,
    steps: int = 20,
    threshold: float = 0.2,
    share: float | str = "adaptive",
    objective: str = "prob",
    alphas: str = "right",
    known_only: bool = True,
    top: int = 10,
    min_share: float = 0.5,
    progress: bool = True,
    limit_per_relation: int | None = None,
    overwrite: bool = False,
    console=None,
    executor: Executor | None = None,
    chunk_facts: int = DEFAULT_CHUNK_FACTS,
    keep_scores: str = "sparse",
    progress_interval: float = 30.0,
    estimator: Estimator | str | None = None,
    screen: int | None = None,
    norm: str | None = None,
) -> RunSummary:
    """Attribute every fact and store the results in the atlas at ``atlas_path`` (resumable).

    Args:
        lm: the model.
        facts: the facts (e.g. ``load_facts("builtin")``); ids must be unique.
        atlas_path: the SQLite file; created when missing, continued when it holds a run of the same model
            and parameters.
        steps: integrated gradients' steps (see :func:`kneuron.integrated_gradients`).
        objective: its objective.
        alphas: its α rule.
        threshold: the coarse threshold (see :func:`kneuron.refine`).
        share: the refine share.
        known_only: compute only facts the model knows: the first answer token ranks below ``top`` for more
            than ``min_share`` of the prompts (:func:`kneuron.facts.known_facts`); the others are recorded as
            'dropped'. False computes every fact (their known-filter outcome is still recorded).
        progress: a rich progress bar (facts done, rate, ETA) and status lines on stderr (``console``).
        limit_per_relation: at most this many facts to compute per relation: the first ones (in the given order)
            that pass the known filter.
        overwrite: delete an existing atlas at ``atlas_path`` first.
        executor: what computes the chunks: :class:`~kneuron.store.chunks.LocalExecutor` (default, this process
            and ``lm``) or :class:`kneuron.parallel.RayExecutor` (Ray actors that each load the model).
        chunk_facts: facts per chunk; a chunk's prompts of the same shape share batches. Part of the atlas's
            identity (it changes scores by float rounding), see :mod:`kneuron.store.chunks`.
        keep_scores: "sparse" (default), "full" or "none": how much of each prompt's score matrix the atlas
            keeps (:mod:`kneuron.store.scores`). Sparse is 15x smaller on SmolLM2-135M (24 KB against 369 KB
            per prompt in float32) and every selection (coarse at thresholds >= 0.05, refined at any share)
            recomputes exactly.
        progress_interval: seconds between plain progress lines when ``console`` is not a terminal.
        estimator: how prompts are attributed: None (exact integrated gradients from ``steps``, ``objective`` and
            ``alphas``, the default), a name ("ig", "gxa", ...) or an Estimator object (which brings its own
            settings); see :mod:`kneuron.attribution.estimators`. Part of the atlas's identity, like ``screen``.
        screen: K, to let gradient x activation pick each fact's K most promising layers and run exact integrated
            gradients only there (:class:`~kneuron.attribution.ScreenedIntegratedGradients`; only with
            integrated gradients). Each fact's params record the layers chosen (``"screen_layers"``).
        norm: for a model that normalises each FFN output (Gemma 2/3, OLMo 2): "frozen" (the default: the scaled
            layer's norm keeps its clean scale) or "live" (the literal definition); see
            :mod:`kneuron.attribution.ffn_norm`. The params record the rule used (none for other models).

    Returns:
        A :class:`RunSummary` (computed, already done, dropped per relation, timing).

    Raises:
        AtlasError: an atlas of another model or other parameters at ``atlas_path``, another run writing it,
            a read-only or locked file, a fact of the atlas given with other content.
        InputError: a parameter out of range; FactError (an InputError): a fact id reused with other content.
    """
    from kneuron.version import __version__

    started = time.perf_counter()
    if limit_per_relation is not None and limit_per_relation < 1:
        raise InputError(f"limit_per_relation must be at least 1; got {limit_per_relation}.")
    params = run_params(steps=steps, threshold=threshold, share=share, objective=objective, alphas=alphas,
                        known_only=known_only, top=top, min_share=min_share, chunk_facts=chunk_facts,
                        keep_scores=keep_scores, estimator=estimator, screen=screen, norm=norm)
    params = with_effective_norm(params, lm)
    facts = _unique(list(facts))
    if console is None and progress:
        from rich.console import Console

        console = Console(stderr=True)
    say = console.print if progress else (lambda *a, **k: None)
    check_facts(facts)  # before the atlas file exists
    for fact in facts:  # a model whose clean forward is not finite is refused before the atlas exists, naming the
        try:  # layer; on the first fact that encodes (one that does not is stored as invalid, as before)
            queries = [encode(lm, prompt, fact.object) for prompt in fact.prompts()]
        except KneuronError:
            continue
        check_finite(lm, queries)
        break
    summary = RunSummary(Path(atlas_path))
    identity = model_identity(lm)
    with Atlas.for_run(atlas_path, identity, params, overwrite=overwrite,
                       kneuron_version=__version__) as atlas, _discarded_on_failure(atlas):
        _register(atlas, lm, facts, known_only=known_only, top=top, min_share=min_share,
                  limit_per_relation=limit_per_relation)
        wanted = {fact.id for fact in facts}
        rows = [row for row in atlas.fact_rows(status=None) if row["id"] in wanted]
        summary.selected = len(rows)
        summary.already_done = sum(row["status"] == "done" for row in rows)
        summary.dropped = dict(Counter(row["relation"] for row in rows if row["status"] == "dropped"))
        summary.invalid = {row["id"]: row["note"] for row in rows if row["status"] == "invalid"}
        todo = [row for row in rows if row["status"] == "pending"]
        _announce(say, atlas, summary, len(todo), known_only)
        if todo:
            _compute(atlas, lm, todo, params, summary, console if progress else None,
                     executor or LocalExecutor(lm), identity, progress_interval)
        if todo or _generic_stale(atlas):
            atlas.update_generic()
    summary.seconds = time.perf_counter() - started
    if summary.computed:
        say(f"[dim]{_facts(summary.computed)} in {summary.compute_seconds:.1f} s of attribution; writing them took "
            f"{summary.write_seconds * 1000:.0f} ms ({100 * summary.store_overhead:.2f}% of it)[/dim]",
            highlight=False)
    return summary


def _facts(count: int) -> str:
    return f"{count} fact" if count == 1 else f"{count} facts"


def _announce(say, atlas: Atlas, summary: RunSummary, todo: int, known_only: bool) -> None:
    say(f"atlas {atlas.path}: {_facts(summary.selected)} selected, {todo} to compute, "
        f"{summary.already_done} already done", highlight=False)
    if summary.dropped:
        total = sum(summary.dropped.values())
        per = ", ".join(f"{relation} {count}" for relation, count in summary.dropped.items())
        hint = " (--all-facts keeps them)" if known_only else ""
        say(f"dropped {_facts(total)} the model does not know{hint}: {per}", highlight=False)
    if summary.invalid:
        first = next(iter(summary.invalid.items()))
        say(f"[yellow]skipped {_facts(len(summary.invalid))} whose prompts this model cannot read, e.g. "
            f"{first[0]}: {first[1]}[/yellow]", highlight=False)


def _generic_stale(atlas: Atlas) -> bool:
    """Whether the generic table was computed over fewer done facts than the atlas has (a run killed after
    its last fact but before it rewrote the table)."""
    done = atlas._rows("SELECT count(*) AS n FROM facts WHERE status = 'done'")[0]["n"]
    return done != atlas.meta.get("generic", {}).get("facts", 0)


def _compute(atlas: Atlas, lm: LanguageModel, todo: list[dict[str, Any]], params: dict[str, Any],
             summary: RunSummary, console, executor: Executor, identity: dict[str, Any],
             progress_interval: float) -> None:
    """Compute the pending facts chunk by chunk through ``executor`` and store each fact in its own transaction
    as its chunk's result arrives (the driver is the atlas's only writer)."""
    from contextlib import nullcontext

    from kneuron.store.progress import RunProgress

    wanted = {row["id"] for row in todo}
    plan = plan_chunks(atlas.fact_rows(status=None), wanted, params["chunk_facts"])
    facts = {fact.id: fact for fact in atlas.facts(status=None)}
    chunks = [Chunk(number, [facts[i] for i in ids], store) for number, ids, store in plan]
    prompts = sum(chunk_prompts(chunk, params) for chunk in chunks)
    bar = (RunProgress(console, len(todo), executor.name, progress_interval, prompts=prompts)
           if console is not None else nullcontext())
    with bar as progress:
        on_prompt = progress.prompt_done if progress is not None else None
        for result in executor.map(iter(chunks), params, identity, on_prompt=on_prompt):
            if progress is not None:
                progress.chunk_done(result.prompts)
            for fact in result.results:
                written = time.perf_counter()
                atlas.store_fact(fact.fact_id, fact.kn, fact.probabilities, fact.baseline, fact.compute_seconds)
                summary.write_seconds += time.perf_counter() - written  # encoding, inserting and committing
                summary.compute_seconds += fact.compute_seconds
                summary.computed += 1
                if progress is not None:
                    progress.advance()
