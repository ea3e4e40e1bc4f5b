"""What a study is: a name, a group, its inputs and options as data, and one ``run`` from a context to rows.

A study measures something about an atlas's facts and knowledge neurons and returns result rows (see
:func:`kneuron.studies.metrics.row`). Everything around it is the same for every study and lives in one runner
(:mod:`kneuron.store.study_runs`): opening the atlas, checking the model's identity, one snapshot for the inputs,
progress, timing, checking afterwards that the model's weights are unchanged, writing the rows with the facts they
covered and the ``params`` rows of its options. So a new study is one class and one :func:`register_study`::

    @register_study
    class Echo(Study):
        name = "echo"
        group = "beyond"
        needs_model = False
        options = (Option("scale", float, 1.0, "multiplies every value", min=0.0),)

        def run(self, context):
            return [row(self.name, "kn", f.relation, f.id, "neurons", context.options["scale"] * len(
                context.neurons[f.id])) for f in context.facts]

It then appears in ``kneuron study list``, runs as ``kneuron study echo --run ATLAS --scale 2``, is stored under
``echo``, gets a section in ``kneuron report`` and a panel on each fact's page of ``kneuron serve``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from kneuron.errors import StudyError

Group = Literal["paper", "beyond", "opt-in"]
GROUPS: tuple[Group, ...] = ("paper", "beyond", "opt-in")


@dataclass(frozen=True)
class Option:
    """One option of a study: its CLI flag, its type, default and bounds, and whether it is stored.

    Attributes:
        name: the keyword the study reads (``context.options[name]``) and, when ``stored``, the metric of its
            ``params`` row.
        type: ``int``, ``float``, ``str`` or ``bool`` (a bool is an on/off flag).
        default: its value when not given (None: not set).
        help: one line for ``--help`` and ``kneuron study list``.
        min, max: inclusive bounds of a number.
        flag: the CLI spelling when it is not ``--`` + name with dashes (e.g. ``--probe`` for ``probe_neurons``).
        stored: whether a numeric value is recorded as a ``params`` row (variant ``params``, no relation or fact)
            with the study's rows; a study that writes that row itself keeps its own.
    """

    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    flag: str | None = None
    stored: bool = True

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted to this option's type, refusing one out of bounds in one line."""
        if value is None:
            return None
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise StudyError(f"{self.cli_flag} {value!r}: give a {self.type.__name__}.") from None
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            bounds = f"between {self.min} and {self.max}" if self.min is not None and self.max is not None else (
                f"at least {self.min}" if self.min is not None else f"at most {self.max}")
            raise StudyError(f"{self.cli_flag} {value!r}: give a value {bounds}.")
        return value

    def describe(self) -> str:
        """``--flag TYPE (default)`` for listings."""
        if self.type is bool:
            return self.cli_flag
        default = "" if self.default is None else f"={self.default}"
        return f"{self.cli_flag} {self.type.__name__.upper()}{default}"


#: the seed option every study that draws random controls shares
SEED = Option("seed", int, 0, "Seeds the random control neurons, the other facts and the edit targets.")
#: the generic-neuron share the paper's studies share: it updates the atlas's generic table (not a params row)
GENERIC_SHARE = Option("generic_share", float, None, "Flag neurons that are knowledge neurons of more than this "
                       "share of the facts as generic (default: the atlas's, 0.1).", min=0.0, max=0.99, stored=False)
#: how many done facts a costly study reads (the first N; all by default)
FACTS_LIMIT = Option("facts_limit", int, None, "Study the first N done facts (default: all).", min=1, flag="--facts",
                     stored=False)


@dataclass
class StudyOutput:
    """What a study's run returns beyond rows: the facts they covered (default: every done fact the context gave),
    notes on what could not be measured (printed as ``note:`` lines), named extra tables the store layer writes
    (e.g. ``"vocabulary"``) and anything its terminal summary needs."""

    rows: list[dict]
    facts: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: how long :meth:`Study.run` took (the runner sets it)
    seconds: float = math.nan
    #: the rows' means with n, 95% interval and paired p-value (:meth:`Study.aggregates`), as stored (the runner
    #: sets them; summaries read them rather than recompute)
    aggregates: list[dict] = field(default_factory=list)


class StudyContext:
    """What a study reads: the atlas's done facts and their neurons in one snapshot, its options, the model
    (loaded on first use) and two caches.

    ``atlas`` is the open atlas (read it inside the runner's snapshot; the runner writes, a study never does).
    :meth:`cached` keeps what is read from (or derived from) this snapshot of the atlas: the context owns it and
    it dies with the context, so a study never sees inputs of an earlier snapshot (a run may add facts between
    two studies of one command). ``shared`` is the command's cache, shared by its studies: the model (see
    :meth:`cached_for_command`) and :meth:`Study.prepare`'s marks.
    ``progress(description, total)`` starts a progress bar and returns its ``advance()``; ``note(text)`` adds
    a line the user should read, ``say(text)`` a status line.
    """

    def __init__(self, atlas: Any, options: Mapping[str, Any], *, load_model: Callable[[], Any] | None = None,
                 shared: dict[str, Any] | None = None, progress: Callable[[str, int], Callable[[], None]] | None = None,
                 note: Callable[[str], None] | None = None, say: Callable[[str], None] | None = None,
                 run_path: str = "", width: int | None = None) -> None:
        self.atlas = atlas
        self.options = dict(options)
        self._load_model = load_model
        self.shared = shared if shared is not None else {}
        self._inputs: dict[str, Any] = {}
        self._progress = progress
        self._note = note
        self._say = say
        self.run_path = run_path or str(getattr(atlas, "path", ""))
        #: the terminal's width, for summaries that have a narrow form (None: wide)
        self.width = width

    # ------------------------------------------------------------------ inputs (cached for this snapshot)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context: an input read from this snapshot of the atlas, or derived from one
        (the facts, their neurons, the encoded prompts, the generic list)."""
        if key not in self._inputs:
            self._inputs[key] = compute()
        return self._inputs[key]

    def cached_for_command(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per command, for what does not depend on the atlas's contents (the model)."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    @property
    def facts(self) -> list:
        """The atlas's done facts (in the atlas's order)."""
        return self.cached("facts", self.atlas.facts)

    @property
    def neurons(self) -> dict:
        """Refined knowledge neurons by fact id, every done fact present (an empty list where it has none)."""
        refined = self.cached("refined", self.atlas.all_refined)
        return {fact.id: list(refined.get(fact.id, ())) for fact in self.facts}

    @property
    def baseline(self) -> dict:
        """The activation-baseline neurons by fact id."""
        return self.cached("baseline", lambda: {f.id: self.atlas.baseline_neurons(f.id) for f in self.facts})

    @property
    def coarse(self) -> dict:
        """Each done fact's coarse neurons per prompt, by fact id."""
        return self.cached("coarse", lambda: {f.id: self.atlas.knowledge_neurons(f.id).coarse for f in self.facts})

    @property
    def lm(self) -> Any:
        """The atlas's model, loaded (and its identity checked) on first use."""
        if self._load_model is None:
            raise StudyError("This study was declared needs_model = False but asked for the model.")
        return self.cached_for_command("lm", self._load_model)

    # ------------------------------------------------------------------ feedback

    def progress(self, description: str, total: int) -> Callable[[], None]:
        return self._progress(description, total) if self._progress else (lambda: None)

    def note(self, text: str) -> None:
        """A line the user should read: something the study could not measure, or measured differently."""
        if self._note:
            self._note(text)

    def say(self, text: str) -> None:
        """A status line (how far it got, how long a part took)."""
        if self._say:
            self._say(text)


class Study:
    """A registered study. Subclass, set the class attributes, implement :meth:`run`, and decorate with
    :func:`~kneuron.studies.registry.register_study`.

    Attributes:
        name: the stored name (the atlas's results table) and the CLI name.
        title: a short human title (the report's section heading).
        group: ``"paper"`` (Dai et al.'s studies, run by ``study all``), ``"beyond"`` (run by ``study beyond``) or
            ``"opt-in"`` (only when named: they recompute or edit at length).
        in_all: whether ``study all`` runs it (default: the paper's group); a study that does not apply to an
            atlas (:meth:`applies`) is skipped there with a note.
        needs_model: whether :meth:`run` uses ``context.lm``.
        changes_weights: whether it edits the model's weights (and must restore them): the runner checks the
            weights' fingerprint right after it, not only at the end of the command.
        reads: studies whose stored rows it reads (they run first when both are asked for).
        aliases: other CLI spellings (hidden in listings).
        options: its options (:class:`Option`), the CLI flags and ``params`` rows.
        fact_panel: whether a fact's page in ``kneuron serve`` shows its rows about that fact.
        controls: variant -> its control variant (random neurons, the activation baseline): the stored aggregates
            carry the paired test of each measure against the same measure of its control on the same facts.
        metric_controls: metric -> its control metric of the same variant, for a study whose control is another
            metric rather than another variant (the estimators study's ``suppress`` against ``suppress_random``).
            A study without a control says so in its docstring (its aggregates then have no p-value).
    """

    name: ClassVar[str]
    title: ClassVar[str] = ""
    group: ClassVar[Group] = "opt-in"
    in_all: ClassVar[bool | None] = None
    needs_model: ClassVar[bool] = True
    changes_weights: ClassVar[bool] = False
    reads: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()
    fact_panel: ClassVar[bool] = True
    controls: ClassVar[Mapping[str, str]] = {}
    metric_controls: ClassVar[Mapping[str, str]] = {}

    @property
    def runs_in_all(self) -> bool:
        return self.group == "paper" if self.in_all is None else bool(self.in_all)

    @property
    def summary_line(self) -> str:
        """The first paragraph of the class docstring: what it measures."""
        text = (type(self).__doc__ or self.title or self.name).strip().split("\n\n")[0]
        return " ".join(text.split())

    def applies(self, context: StudyContext) -> str | None:
        """Why this atlas cannot be studied (one line), or None when it can: ``study NAME`` refuses with it,
        ``study all`` skips the study with a note."""
        return None

    def prepare(self, atlas: Any, options: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """Bring the atlas's derived tables up to date before the snapshot (e.g. the generic-neuron flags); the
        only place a study may ask the atlas to write. Default: nothing."""

    def run(self, context: StudyContext) -> StudyOutput | list[dict]:
        """The study's rows (or a :class:`StudyOutput`)."""
        raise NotImplementedError

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """The means the runner stores with the rows, each with its n, 95% interval and paired p-value against
        :attr:`controls` (:func:`kneuron.studies.intervals.aggregate_rows`). Default: every per-fact measure,
        overall and per relation."""
        from kneuron.studies.intervals import aggregate_rows

        return aggregate_rows(output.rows, self.controls, metric_controls=self.metric_controls)

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        """Its headline figures as ``(measure, value)`` lines for the command's summary table (``aggregates``: the
        stored ones, see :meth:`aggregates`). Default: the mean of each (variant, metric) over the facts with its
        interval and n, for the first few."""
        return default_measures(rows, aggregates)

    def summary(self, output: StudyOutput, context: StudyContext) -> list[Any]:
        """Tables and lines (rich renderables) the command prints after the summary table. Default: none."""
        return []

    def result_tables(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[dict[str, Any]]:
        """Tables of its stored rows for ``kneuron report --json`` (the docs render them), beyond its
        :meth:`measures`: each ``{"title", "columns", "rows"}`` of plain cells. Default: none."""
        return []

    def fact_charts(self, rows: Sequence[dict]) -> list[dict[str, Any]]:
        """Charts of its rows about one fact, drawn on the fact's page of ``kneuron serve`` above its table: plain
        data, each a heatmap ``{"title", "x": column labels, "y": row labels, "values": [[x, y, value], ...],
        "caption"}`` (indices into the labels). Default: none."""
        return []

    def panel_rows(self, rows: Sequence[dict]) -> list[dict]:
        """Which of its rows about one fact the fact page's table lists (the rows a chart shows may stay out; the
        study's page and the API keep all of them). Default: all."""
        return list(rows)


def finite_mean(values: Iterable[float]) -> tuple[float, int]:
    kept = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return (sum(kept) / len(kept) if kept else math.nan), len(kept)


def means_by_measure(rows: Sequence[dict]) -> list[tuple[str, str, float, int]]:
    """``(variant, metric, mean, n)`` of every non-``params`` (variant, metric), in order of first appearance."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("variant") == "params":
            continue
        groups.setdefault((str(r.get("variant", "")), str(r.get("metric", ""))), []).append(r.get("value"))
    return [(variant, metric, *finite_mean(values)) for (variant, metric), values in groups.items()]


#: how many measures the default summary shows
DEFAULT_MEASURES = 8


def default_measures(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
    """The first few (variant, metric) means; with the stored interval where there is one."""
    from kneuron.studies.intervals import find, format_interval

    lines = []
    for variant, metric, mean, n in means_by_measure(rows)[:DEFAULT_MEASURES]:
        if not n:
            continue
        stored = find(aggregates, variant, metric)
        lines.append((f"{metric} ({variant})", format_interval(stored)) if stored.n else
                     (f"{metric} ({variant}, mean of {n})", f"{mean:.4g}"))
    return lines


def show_token(token: str) -> str:
    """A token as text with its spaces and control characters visible: ' Paris'."""
    return repr(token)


def number(value: float, spec: str) -> str:
    """``value`` formatted with ``spec``; a dash for NaN, infinities and non-numbers (the summaries' cells)."""
    return f"{value:{spec}}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"
