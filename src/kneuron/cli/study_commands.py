"""Commands that study an atlas and report on it: ``study`` (a group: one subcommand per registered study, ``all``,
``beyond`` and ``list``) and ``report``.

The study subcommands are made from the study registry (:mod:`kneuron.studies.registry`) each time the CLI is
built: a study's :class:`~kneuron.studies.base.Option` s become its flags, and every study runs through the one
runner, :func:`kneuron.store.study_runs.run_studies_on_atlas`. Nothing here names a study.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.models import CommandInfo

from kneuron.cli.app import RunOption, app, command, console, err_console, fail, load_model, path_value
from kneuron.errors import KneuronError
from kneuron.store.progress import StudyProgress
from kneuron.store.study_runs import RunEvents, StudyResult, run_studies_on_atlas
from kneuron.studies.base import Option, Study, StudyContext, StudyOutput
from kneuron.studies.registry import (
    in_all,
    merged_options,
    names_of,
    registered_studies,
    running_order,
    studies_in,
)


class StudyTyper(typer.Typer):
    """A typer group whose commands are remade from the study registry whenever the CLI is built (so a study
    registered after ``import kneuron.cli`` has its command too)."""

    @property  # type: ignore[override]
    def registered_commands(self) -> list[CommandInfo]:
        return _Commands(self._fixed, study_commands())

    @registered_commands.setter
    def registered_commands(self, value: list[CommandInfo]) -> None:
        self._fixed = value


class _Commands(list):
    """The fixed commands and the generated ones; what typer appends (``@study_app.command``) stays."""

    def __init__(self, fixed: list[CommandInfo], generated: list[CommandInfo]) -> None:
        super().__init__([*fixed, *generated])
        self._fixed = fixed

    def append(self, item: CommandInfo) -> None:
        self._fixed.append(item)
        super().append(item)


study_app = StudyTyper(
    help="Run studies on an atlas's facts and neurons and store their results in it (`kneuron study list` shows "
         "them: name, group, model, options).",
    no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(study_app, name="study")


# ------------------------------------------------------------------------------------------- the commands


def _flag_parameter(option: Option) -> inspect.Parameter:
    kind = option.type
    annotation: Any = kind if option.default is not None or kind is bool else (kind | None)
    extra: dict[str, Any] = {}
    if kind in (int, float):
        extra = {"min": option.min, "max": option.max}
    value = option.default if kind is not bool else bool(option.default)
    shown: bool | str = option.default is not None
    if isinstance(option.default, str) and "," in option.default:  # a comma list: let the help wrap after commas
        shown = ", ".join(item.strip() for item in option.default.split(","))
    default = typer.Option(value, option.cli_flag, help=option.help, show_default=shown, **extra)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _common_parameters() -> list[inspect.Parameter]:
    keyword = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("run", keyword, default=typer.Option(..., "--run", show_default=False,
                                                                help="The atlas (.sqlite) that `kneuron run` wrote."),
                          annotation=Path),
        inspect.Parameter("model", keyword, default=typer.Option(
            None, "--model", "-m", envvar="KNEURON_MODEL", show_default=False,
            help="The atlas's model (default: the one it names); another model is refused."), annotation=str | None),
        inspect.Parameter("device", keyword, default=typer.Option("cpu", "--device",
                                                                   help="Torch device: cpu, cuda, cuda:1, mps."),
                          annotation=str),
    ]


def _command(name: str, help_text: str, options: Sequence[Option], run: Callable[..., None], *,
             extra: Sequence[inspect.Parameter] = (), hidden: bool = False) -> CommandInfo:
    """A typer command ``name`` whose flags are ``options`` (and --run, --model, --device, ``extra``), calling
    ``run(**values)``; a KneuronError is one red line and exit code 1."""

    def callback(**values: Any) -> None:
        try:
            run(**values)
        except KneuronError as exc:
            raise fail(exc) from None

    parameters = [*_common_parameters(), *(_flag_parameter(o) for o in options), *extra]
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in parameters}
    callback.__doc__ = help_text
    return CommandInfo(name=name, callback=callback, help=help_text, hidden=hidden)


def _text_option(name: str, flag: str, help_text: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                             default=typer.Option(None, flag, help=help_text, show_default=False))


def study_commands() -> list[CommandInfo]:
    """One command per registered study (its aliases hidden), then ``all`` and ``beyond``."""
    commands = []
    for study in registered_studies():
        def run_one(study: Study = study, **values: Any) -> None:
            run_and_print([study], values)

        spellings = list(dict.fromkeys([study.name, study.name.replace("_", "-"), *study.aliases]))
        needs = "needs the model" if study.needs_model else "no model"
        help_text = f"{study.summary_line} [dim]({study.group}; {needs})[/dim]"
        for i, spelling in enumerate(spellings):
            commands.append(_command(spelling, help_text, study.options, run_one, hidden=i > 0))
    everything = in_all() + studies_in("beyond")
    commands.append(_command(
        "all", f"The studies of `study all` ({', '.join(s.name for s in in_all())}; one that does not apply to the "
        "atlas is skipped with a note), then --beyond ones on the same model load.",
        merged_options(everything), run_all,
        extra=[_text_option("beyond", "--beyond", "Then these studies beyond the paper, comma-separated "
                                                  "(e.g. consistency,vocabulary).")]))
    commands.append(_command(
        "beyond", f"The studies beyond the paper ({', '.join(s.name for s in studies_in('beyond'))}) on one model "
        "load, or the --only ones.", merged_options(studies_in("beyond")), run_beyond,
        extra=[_text_option("only", "--only", "Some of them, comma-separated (default: all of them).")]))
    return commands


def run_all(beyond: str | None = None, **values: Any) -> None:
    extra = names_of(beyond, studies_in("beyond"), "--beyond") if beyond is not None else []
    run_and_print([*in_all(), *extra], values, skip_inapplicable=True)


def run_beyond(only: str | None = None, **values: Any) -> None:
    run_and_print(names_of(only, studies_in("beyond"), "--only"), values, skip_inapplicable=only is None)


@study_app.command("list")
def list_studies() -> None:
    """Every registered study: its group, whether it needs the model, what it reads and its options."""
    table = Table(title=Text("Studies (kneuron study NAME --run ATLAS)", style="bold"), title_justify="left",
                  show_edge=False)
    for column in ("study", "group", "model", "in all", "reads", "options", "what it measures"):
        table.add_column(column, overflow="fold")
    for study in registered_studies():
        table.add_row(study.name, study.group, "yes" if study.needs_model else "no",
                      "yes" if study.runs_in_all else "", ", ".join(study.reads),
                      " ".join(o.describe() for o in study.options), study.summary_line)
    console.print(table)


# ------------------------------------------------------------------------------------------- running, printing


class TerminalEvents(RunEvents):
    """The runner's events as rich progress bars on a terminal (on stderr, gone when done), plain progress lines
    in a log (:class:`~kneuron.store.progress.StudyProgress`), and one line per note."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._plain: StudyProgress | None = None
        #: each finished study's summary (tables, lines), printed after the summary table
        self.summaries: list[Any] = []

    def study_done(self, study: Study, output: StudyOutput, context: StudyContext) -> None:
        self.summaries += study.summary(output, context)

    def study_started(self, study: Study) -> None:
        err_console.print(Text(f"study {study.name}", style="bold"), highlight=False)

    def study_skipped(self, study: Study, why: str) -> None:
        err_console.print(Text(f"{study.name}: skipped ({why}).", style="dim"), soft_wrap=True)

    @contextmanager
    def running(self, study: Study) -> Iterator[None]:
        if not err_console.is_terminal:  # a log: plain lines at least every 30 s (a bar would print nothing)
            with StudyProgress(err_console, study.name) as plain:
                self._plain = plain
                try:
                    yield
                finally:
                    self._plain = None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            self._progress = progress
            try:
                yield
            finally:
                self._progress = None

    def progress(self, description: str, total: int) -> Callable[[], None]:
        if self._plain is not None:
            return self._plain.task(description, total)
        if self._progress is None:
            return lambda: None
        progress = self._progress
        for task in progress.tasks:
            progress.update(task.id, visible=False)
        task = progress.add_task(description, total=total)
        return lambda: progress.advance(task)

    def note(self, study: Study, text: str) -> None:
        err_console.print(Text(f"note: {text}", style="yellow"), soft_wrap=True)

    def say(self, study: Study, text: str) -> None:
        err_console.print(Text(text, style="dim"), soft_wrap=True)


def run_and_print(studies: Sequence[Study], values: dict[str, Any], *, skip_inapplicable: bool = False) -> None:
    """Run ``studies`` on ``--run`` through the runner, then print the summary table, each study's own summary and
    how long each took."""
    run, model, device = values.pop("run"), values.pop("model"), values.pop("device")
    events = TerminalEvents()
    results = run_studies_on_atlas(run, running_order(studies), values, model=model,
                                   load_model=lambda name: load_model(name, device), events=events,
                                   skip_inapplicable=skip_inapplicable, width=console.width)
    print_results(results, run, events.summaries)


def print_results(results: Sequence[StudyResult], run: Path, summaries: Sequence[Any]) -> None:
    done = [r for r in results if not r.skipped]
    if not done:
        return
    spent = [f"{r.study.name} {r.output.seconds:.1f} s" for r in done]
    err_console.print(f"[dim]studies: {', '.join(spent)}; stored in {run} (`kneuron report --run {run}`)[/dim]",
                      highlight=False)
    lines = [(r.study.name, measure, value) for r in done
             for measure, value in r.study.measures(r.rows, r.output.aggregates)]
    if lines:
        facts = max(len(r.output.facts or []) for r in done)
        table = Table(title=Text(f"Studies of {facts} facts, stored in {run}", style="bold"), title_justify="left",
                      show_edge=False)
        table.add_column("study")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for line in lines:
            table.add_row(*line)
        console.print(table)
    for part in summaries:
        console.print(part, soft_wrap=isinstance(part, Text))


@command()
def report(
    run: RunOption,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="The HTML file to write (default: the atlas's path with .html).",
        show_default=False, parser=path_value)
    ] = None,
    raw_auc: Annotated[bool, typer.Option(
        "--raw-auc", help="Headline auc_kn from raw activations (the paper's) instead of sign-aligned ones. A gated "
                          "FFN is unchanged when a neuron's up row and down column both flip sign, so only the "
                          "sign-aligned AUC is well defined there; for positive activations the two agree.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the findings as JSON there (the headline, every study's measures and the stored "
                       "aggregates): what the docs' findings page renders, e.g. docs/data/findings-smollm2.json.",
        show_default=False)] = None,
) -> None:
    """Write one self-contained HTML report (tables, figures) of an atlas's studies; print the headline line."""
    from kneuron.report import ReportData, headline_line, write_report

    data = ReportData.from_atlas(run)
    path = write_report(data, out or run.with_suffix(".html"))
    if json_out is not None:
        from kneuron.report.findings import write_findings

        command = f"kneuron report --run {run} --json {json_out}" + (" --raw-auc" if raw_auc else "")
        written = write_findings(run, json_out, command)
        err_console.print(f"[dim]findings: {written}[/dim]", highlight=False)
    for warning in data.warnings():
        err_console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
    missing = [s for s, rows in data.results.items() if not rows]
    if missing:
        err_console.print(f"[yellow]no results yet for {', '.join(missing)}: `kneuron study all --run {run}`"
                          "[/yellow]", highlight=False)
    typer.echo(headline_line(path, data, signed_auc=not raw_auc))
