"""The one runner of studies on an atlas: what every study needs done around it, done once.

For each study asked for, in an order where a study runs after those it reads:

1. its options are checked and completed with their defaults;
2. :meth:`~kneuron.studies.base.Study.prepare` brings derived tables up to date (the only write before it runs);
3. it runs inside one snapshot of the atlas (its inputs are one moment, also while ``kneuron run`` writes), with
   the model loaded on first use and its identity checked against the atlas's;
4. its rows are written with the facts they covered and a ``params`` row per numeric stored option (unless the
   study wrote that row itself), its extra tables through the store module that owns them;
5. it is timed, and the model's weight fingerprint is checked after a study that edits weights and at the end.

Progress, notes and status lines go to the caller's :class:`RunEvents` (the CLI draws them with rich; a notebook
gets nothing, or logging).

Example:
    >>> results = run_studies_on_atlas("runs/demo.sqlite", ["layers", "consistency"], load_model=kneuron.load)
    >>> results[0].rows[:2]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kneuron.errors import AtlasError, StudyError
from kneuron.studies.base import Study, StudyContext, StudyOutput
from kneuron.studies.metrics import row
from kneuron.studies.registry import running_order, study_named

logger = logging.getLogger(__name__)


class RunEvents:
    """What the runner reports while it works; every method does nothing by default (the CLI overrides them)."""

    def study_started(self, study: Study) -> None:
        logger.info("study %s", study.name)

    def study_skipped(self, study: Study, why: str) -> None:
        logger.info("study %s skipped: %s", study.name, why)

    def progress(self, description: str, total: int) -> Callable[[], None]:
        return lambda: None

    def note(self, study: Study, text: str) -> None:
        logger.warning("%s: %s", study.name, text)

    def say(self, study: Study, text: str) -> None:
        logger.info("%s: %s", study.name, text)

    def study_done(self, study: Study, output: StudyOutput, context: StudyContext) -> None:
        """After a study's rows are stored (the atlas still open: a summary may read it)."""

    @contextmanager
    def running(self, study: Study) -> Iterator[None]:
        """Around one study's run (the CLI shows its progress bars in here)."""
        yield


@dataclass
class StudyResult:
    """One study's stored result: its rows, output and seconds, or why it was skipped."""

    study: Study
    output: StudyOutput = field(default_factory=lambda: StudyOutput([]))
    skipped: str | None = None

    @property
    def rows(self) -> list[dict]:
        return self.output.rows


def resolve_options(study: Study, given: Mapping[str, Any]) -> dict[str, Any]:
    """The study's options: the given ones checked (bounds, type), the others at their defaults; a name the study
    does not have is ignored (``study all`` passes one set of options to several studies)."""
    return {option.name: option.check(given[option.name]) if given.get(option.name) is not None else option.default
            for option in study.options}


def params_rows(study: Study, options: Mapping[str, Any], rows: Sequence[dict]) -> list[dict]:
    """A ``params`` row per numeric stored option the rows do not already record."""
    present = {r["metric"] for r in rows if r.get("variant") == "params" and not r.get("fact_id")}
    extra = []
    for option in study.options:
        value = options.get(option.name)
        if option.stored and option.name not in present and isinstance(value, (int, float)):
            extra.append(row(study.name, "params", "", "", option.name, float(value)))
    return extra


def _table_writers() -> dict[str, tuple[Callable, Callable]]:
    """The extra tables a study's output may carry, by name: (write(atlas, payload), read(atlas))."""
    from kneuron.store.vocabulary import read_vocabulary, write_vocabulary

    return {"vocabulary": (lambda atlas, payload: write_vocabulary(atlas, *payload), read_vocabulary)}


def check_model(atlas: Any, lm: Any) -> Any:
    """``lm`` when it is the model the atlas was made with, else an AtlasError saying which to give."""
    from kneuron.models.identity import model_identity

    meta = atlas.meta
    if model_identity(lm)["fingerprint"] != meta.get("fingerprint"):
        raise AtlasError(
            f"{atlas.path} was made with {meta.get('model')!r}, and {lm.name!r} is another model (other weights "
            f"or vocabulary); its neurons would not be this model's. Give --model {meta.get('model')}, or run "
            f"`kneuron run --model {lm.name} --out runs/OTHER.sqlite` first.")
    return lm


def run_studies_on_atlas(
    path: str | Path,
    names: Sequence[str | Study],
    options: Mapping[str, Any] | None = None,
    *,
    load_model: Callable[[str], Any] | None = None,
    model: str | None = None,
    lm: Any = None,
    events: RunEvents | None = None,
    skip_inapplicable: bool = False,
    width: int | None = None,
    write: bool = True,
) -> list[StudyResult]:
    """Run the named studies on the atlas at ``path`` and store their rows; returns one result per study in
    running order.

    Args:
        names: study names (or aliases, or Study objects).
        options: option values by option name (``None`` values mean the default); each study takes its own.
        load_model: ``name -> LanguageModel``, called once and only when a study needs the model (``model`` or
            the atlas's own name).
        lm: a model the caller already loaded (its identity is checked like a loaded one).
        skip_inapplicable: skip a study that does not apply to this atlas (``study all``) instead of refusing.
        width: the terminal's width, for summaries with a narrow form.
        write: store the rows (False: open the atlas read-only and only return them; derived tables are not
            brought up to date then).
    """
    from kneuron.models.identity import model_identity
    from kneuron.store.atlas import Atlas

    events = events or RunEvents()
    studies = running_order(s if isinstance(s, Study) else study_named(s) for s in names)
    given = dict(options or {})
    resolved = {study.name: resolve_options(study, given) for study in studies}  # refused before any work
    shared: dict[str, Any] = {}
    results: list[StudyResult] = []
    with Atlas.open(path, read_only=not write) as atlas:
        with atlas.snapshot():
            has_done = atlas.has_done_facts()
        if not has_done:
            raise AtlasError(f"{path} has no computed facts yet: run `kneuron run --out {path}` (or let it finish).")
        fingerprint: list[str] = []

        def model_for_atlas() -> Any:
            if lm is not None:
                loaded = lm
            elif load_model is None:
                raise StudyError("This study needs the model: give load_model (or lm).")
            else:
                loaded = load_model(model or atlas.meta.get("model"))
            check_model(atlas, loaded)
            fingerprint.append(atlas.meta.get("fingerprint"))
            return loaded

        if lm is not None:
            shared["lm"] = model_for_atlas()
        for study in studies:
            context = StudyContext(atlas, resolved[study.name], load_model=model_for_atlas, shared=shared,
                                   progress=events.progress, note=lambda text, s=study: events.note(s, text),
                                   say=lambda text, s=study: events.say(s, text), run_path=str(path), width=width)
            if write:
                study.prepare(atlas, resolved[study.name], shared)
            with atlas.snapshot():
                why = study.applies(context)
                if why and not skip_inapplicable:
                    raise StudyError(why)
                if why:
                    events.study_skipped(study, why)
                    results.append(StudyResult(study, skipped=why))
                    continue
                events.study_started(study)
                start = time.perf_counter()
                with events.running(study):
                    output = study.run(context)
                output = output if isinstance(output, StudyOutput) else StudyOutput(list(output))
                output.seconds = time.perf_counter() - start
                covered = output.facts if output.facts is not None else [fact.id for fact in context.facts]
                output.facts = covered
                aggregates = study.aggregates(output, context)
            if study.changes_weights and fingerprint:
                _check_unchanged(shared["lm"], fingerprint[0], [study.name], model_identity)
            output.rows = list(output.rows) + params_rows(study, resolved[study.name], output.rows)
            if write:
                atlas.write_results(study.name, output.rows, facts=covered, aggregates=aggregates)
                _write_tables(atlas, study, output)
                with atlas.snapshot():
                    output.aggregates = atlas.aggregates(study.name)  # the summary shows what was stored
            else:
                output.aggregates = aggregates
            for note in output.notes:
                events.note(study, note)
            results.append(StudyResult(study, output))
            events.study_done(study, output, context)
        if fingerprint and "lm" in shared:
            _check_unchanged(shared["lm"], fingerprint[0], [r.study.name for r in results if not r.skipped],
                             model_identity)
    return results


def _write_tables(atlas: Any, study: Study, output: StudyOutput) -> None:
    """Write the output's extra tables through the store modules that own them, and read them back into
    ``output.extra`` (what the study's summary shows is what was stored)."""
    writers = _table_writers()
    for name, payload in output.tables.items():
        if name not in writers:
            raise StudyError(f"{study.name} returned a table {name!r} no store module writes.")
        write, read = writers[name]
        write(atlas, payload)
        with atlas.snapshot():
            output.extra[name] = read(atlas)


def _check_unchanged(lm: Any, fingerprint: str, studies: Sequence[str], identity: Callable) -> None:
    # hashed anew, not from the cache: this check must also see a change that bypassed the version counters
    if identity(lm, fresh=True)["fingerprint"] != fingerprint:  # pragma: no cover - would be a bug
        raise StudyError(f"The model's weights changed during {', '.join(studies)}: an edit or patch was not undone; "
                         "please report this.")
