"""The ``kneuron`` typer app, its shared options and the helpers its command modules share.

Each command is a small function that parses its options, calls the library and prints with rich. To add one,
in the command module of its group::

    @command()
    def find(model: ModelOption = None, prompt: str = typer.Argument(...)) -> None:
        \"\"\"One-line help shown by ``kneuron --help``.\"\"\"
        lm = load_model(model)
        ...
        console.print(table)

``@command()`` registers the function on :data:`app`, turns any :class:`KneuronError` into one red
line on stderr and exit code 1 (no traceback), and prints Python warnings as one yellow ``warning: ...``
line. Results go to :data:`console` (stdout); progress, status, warnings and errors go to
:data:`err_console` (stderr), so output can be piped. Options of the root command that every model load
needs (``--arch``) reach :func:`load_model` through :data:`root_arch`, so commands do not repeat them.
"""


from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kneuron.attribution.estimators import estimator_names
from kneuron.attribution.integrated_gradients import ALPHA_RULES
from kneuron.cli.output import OutputConsole, plain_output, unwrap_paragraphs
from kneuron.errors import KneuronError
from kneuron.studies.base import show_token  # noqa: F401  (the commands' shared token display)
from kneuron.version import __version__

app = typer.Typer(
    name="kneuron",
    help="Find, test and edit the knowledge neurons (FFN units) of transformer language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
#: results (tables) go to stdout: full cells when piped, tab-separated with ``--plain`` (:mod:`kneuron.cli.output`)
console = OutputConsole()
#: status, progress and errors go to stderr
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

# ------------------------------------------------------------------------------------------ shared options

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", envvar="KNEURON_MODEL", show_default=False,
        help="Model: an embedded name (smollm2-135m [default], gemma3-270m), a .gguf file, a local folder "
             "or a hub id. Env: KNEURON_MODEL.",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1, mps.")]
# attribution settings shared by `find` and `run`
StepsOption = Annotated[int, typer.Option(min=1, help="Riemann steps of integrated gradients.")]
ThresholdOption = Annotated[float, typer.Option(help="Coarse threshold, as a fraction of a prompt's top score.")]
ShareOption = Annotated[str, typer.Option(help="Refine: keep neurons coarse in more than this fraction of the "
                                               "prompts, or 'adaptive' (start 0.7, step 0.05, aim 2-5 neurons).")]
ObjectiveOption = Annotated[str, typer.Option(help="prob (the paper) or logprob.")]
AlphasOption = Annotated[str, typer.Option(
    "--alphas", help=f"Integrated gradients' points: {', '.join(ALPHA_RULES)} (right: the paper's k/m; gauss: "
                     "Gauss-Legendre, near a 200-step sum with few --steps).")]
EstimatorOption = Annotated[str, typer.Option(
    "--estimator", help=f"Attribution estimator: {', '.join(estimator_names())} (ig: exact integrated gradients, "
                        "the paper's and the default; gxa: gradient x activation, one backward pass).")]
ScreenOption = Annotated[int | None, typer.Option(
    "--screen", min=1, show_default=False,
    help="Opt-in: gradient x activation picks each fact's K most promising layers and exact integrated "
         "gradients runs only there (with --estimator ig; the refined neurons can differ from a full run's).")]
NormOption = Annotated[str | None, typer.Option(
    "--norm", show_default=False,
    help="Models that normalise each FFN output before the residual (Gemma 2/3, OLMo 2): frozen (the default: the "
         "scaled layer's norm keeps its clean scale, so the integral keeps its meaning) or live (the literal "
         "definition, which that norm makes degenerate). Other models have nothing to freeze.")]
# `facts` and `run`: keep the facts of some languages (ids ending in @code, as in --facts multilingual)
LanguageOption = Annotated[str | None, typer.Option(
    "--language", show_default=False,
    help="Comma-separated language codes to keep (en,fr,de,es,zh): the facts whose id ends in @code, e.g. "
         "with --facts multilingual.")]


def fail(exc: BaseException | str) -> typer.Exit:
    """Print ``exc`` as a red error line (further lines of the message plain) and return Exit(1) to raise."""
    first, _, rest = str(exc).partition("\n")
    line = Text("error: ", style="bold red")
    line.append(first, style="red")
    err_console.print(line, soft_wrap=True)
    if rest:
        err_console.print(Text(rest), soft_wrap=True)
    return typer.Exit(code=1)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a Python warning as one ``warning: ...`` line on stderr (no file name, no source line)."""
    text = Text("warning: ", style="bold yellow")
    text.append(str(message), style="yellow")
    err_console.print(text, soft_wrap=True)


def command(*args, **kwargs) -> Callable[[F], F]:
    """``app.command`` that reports KneuronError as one red line and exit code 1, and warnings as one line."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*a, **kw):
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                try:
                    return func(*a, **kw)
                except KneuronError as exc:
                    raise fail(exc) from None

        kwargs.setdefault("help", unwrap_paragraphs(func.__doc__))
        app.command(*args, **kwargs)(wrapper)
        return func

    return decorate


def quiet_transformers() -> None:
    """Keep transformers' warnings and progress bars (also the GGUF de-quantizing bar) off the terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


#: the root command's ``--arch`` (``kneuron --arch X COMMAND``), set anew by every invocation (typer vendors its
#: own click, whose current-context lookup is private, so root options travel in a ContextVar).
root_arch: ContextVar[str | None] = ContextVar("kneuron_root_arch", default=None)


def load_model(model: str | None, device: str = "cpu", arch: str | None = None):
    """Load ``model`` (see :data:`ModelOption`) quietly, with a status spinner and one line saying how long.

    ``arch`` (default: the root ``--arch`` option / ``KNEURON_ARCH``) names an ArchSpec for a family kneuron
    does not know.
    """
    from kneuron.models import load
    from kneuron.models.loading import needs_conversion

    arch = arch or root_arch.get()
    extra = {"arch": arch} if arch else {}

    quiet_transformers()
    name = model or "smollm2-135m"
    status = f"Loading {name} ..."
    if needs_conversion(model):
        status = f"Converting {name} from GGUF (once; later loads read the cached copy) ..."
        err_console.print(f"[dim]{status}[/dim]", highlight=False)
    start = time.perf_counter()
    with err_console.status(status):
        lm = load(model, device=device, **extra)
    err_console.print(
        f"[dim]{lm.name}: {lm.spec.family}, {lm.kind}, {lm.n_layers} layers x {lm.n_neurons} neurons, "
        f"loaded in {time.perf_counter() - start:.1f} s[/dim]", highlight=False,
    )
    return lm


def _print_version(value: bool) -> None:
    if value:
        console.print(f"kneuron {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, envvar="KNEURON_THREADS",
                                         help="Torch CPU threads (0: torch's default). Env: KNEURON_THREADS.")] = 0,
    arch: Annotated[str | None, typer.Option(
        "--arch", envvar="KNEURON_ARCH", show_default=False,
        help="An ArchSpec for a model family kneuron does not know, for every command that loads a model: "
             "package.module:NAME (importable) or path/to/file.py:NAME. Env: KNEURON_ARCH.")] = None,
    plain: Annotated[bool, typer.Option(
        "--plain", envvar="KNEURON_PLAIN",
        help="Print every table as tab-separated lines (a header line, one line per row; a table's title as a "
             "'# title' line before it), for cut, awk or a spreadsheet. Piped output is never truncated "
             "without it either. Env: KNEURON_PLAIN=1.")] = False,
) -> None:
    """Find, test and edit the knowledge neurons (FFN units) of transformer language models."""
    root_arch.set(arch)
    plain_output.set(plain)
    if threads:
        import os

        import torch

        cpus = os.cpu_count() or 1
        if threads > cpus:  # refused before torch starts a pool of that many threads (10⁹ of them exhaust memory)
            raise fail(KneuronError(f"--threads {threads:,} is more than the {cpus} CPUs of this machine: give at most "
                                    f"{cpus} (0: torch's default)."))
        torch.set_num_threads(threads)




# ---------------------------------------------------------------------------------------------- helpers

def parse_prompt(lm, text: str):
    """A Prompt from the command line: plain text for causal models, [Y] or the mask token for masked ones."""
    from kneuron.facts.encoding import prompt_from_text

    return prompt_from_text(lm, text)


def vocab_size(lm) -> int:
    return int(lm.model.get_output_embeddings().weight.shape[0])


def given_options(ctx: typer.Context, *names: str) -> list[str]:
    """Which of the parameters ``names`` the command line gave (not left at their defaults)."""
    return [name for name in names if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]


def parse_estimator(name: str, screen: int | None, *, steps: int, objective: str, alphas: str,
                    norm: str | None = None, threshold: float | None = None, share: str | None = None,
                    given: Sequence[str] = ()):
    """``--estimator``, ``--screen`` (and the integrated-gradients options) as what the library takes: None for the
    exact default (``--estimator ig`` without a screen: the library's own default path), else an Estimator.
    ``given``: which of ``steps``, ``alphas`` and ``objective`` the user gave; one the estimator does not use is
    refused (``--estimator gxa --steps 50`` ignored the steps silently).

    Raises:
        KneuronError: an unknown estimator, alpha or norm rule, ``--screen`` with an estimator other than ig, or
            an option given that the estimator does not use.
    """
    from kneuron.attribution.ffn_norm import check_norm
    from kneuron.attribution.knowledge import resolve_estimator

    check_norm(norm)

    if name not in estimator_names():
        raise KneuronError(f"Unknown estimator {name!r}: use --estimator {' or '.join(estimator_names())}.")
    if screen is not None and name != "ig":
        raise KneuronError(f"--screen {screen} picks the layers where exact integrated gradients runs, so it needs "
                           f"--estimator ig, not {name}: drop --screen or use --estimator ig.")
    chosen = resolve_estimator(name, steps=steps, objective=objective, alphas=alphas, screen=screen,  # checks them
                               **({} if norm is None else {"norm": norm}),
                               **({} if threshold is None else {"threshold": threshold}),  # two-stage-ig aims at
                               **({} if share is None else {"share": parse_share(share)}))  # them
    unused = [f"--{option}" for option in given if option not in chosen.params()]
    if unused:
        takes = [f"--{k}" for k in ("steps", "alphas", "objective") if k in chosen.params()]
        raise KneuronError(f"--estimator {name} does not use {' or '.join(unused)} "
                           f"({f'of these it takes only {takes[0]}' if takes else 'it takes none of these'}): "
                           "leave them out, or use --estimator ig, which does.")
    return None if name == "ig" and screen is None and norm is None else chosen


def parse_share(value: str) -> float | str:
    if value == "adaptive":
        return value
    try:
        return float(value)
    except ValueError:
        raise KneuronError(f"--share takes a fraction such as 0.5 or 'adaptive'; got {value!r}.") from None


def neuron_table(kn, writes: dict[tuple[int, int], str] | None = None) -> Table:
    """A fact's refined neurons: mean score and in how many of its prompts each one is coarse (and, given
    ``writes``, a column of what each one writes: ``kneuron find --vocab``)."""
    table = Table(show_edge=False)
    table.add_column("neuron", style="bold")
    table.add_column("mean score", justify="right")
    table.add_column("in prompts", justify="right")
    if writes is not None:
        table.add_column("promotes most (value slot × activation sign)")
    for neuron in kn.neurons:
        count = sum(any(c.key == neuron.key for c in coarse) for coarse in kn.coarse)
        extra = [Text(writes.get(neuron.key, ""))] if writes is not None else []
        table.add_row(str(neuron), f"{neuron.score:.4g}", f"{count}/{len(kn.coarse)}", *extra)
    return table


def path_value(text: str) -> Path:
    """A path option's value: an empty one is refused (``Path("")`` is the current folder, where ``--save ''``
    wrote ``edit.safetensors``), in one usage line before any work."""
    if not text.strip():
        raise typer.BadParameter("an empty path: give a file or folder name")
    return Path(text)


RunOption = Annotated[Path, typer.Option(
    "--run", help="The atlas (.sqlite) that `kneuron run` wrote.", show_default=False, parser=path_value)]


def atlas_model(atlas, model: str | None, device: str):
    """The model an atlas was made with (``--model`` or the atlas's own), refusing another one."""
    from kneuron.store.study_runs import check_model

    return check_model(atlas, load_model(model or atlas.meta.get("model"), device))


def parse_relations(value: str | None) -> list[str] | None:
    return [r.strip() for r in value.split(",") if r.strip()] if value else None
