"""MkDocs hooks: the pages generated from kneuron itself when the site is built.

- ``reference/cli.md``: every command of the typer app, walked as its click command tree (names, arguments,
  options, defaults, help), so the CLI reference cannot drift from ``kneuron --help``;
- ``studies/<name>.md``: one page per registered study (:mod:`kneuron.studies.registry`): its group, what it needs
  and reads, its options and its docstring; ``<!-- study-list -->`` in a page becomes the list of them;
- ``<!-- results: PATH -->`` in a page becomes tables rendered from that committed JSON results file (relative
  to the repository root), the file the benchmark or study command named beside it wrote; a missing file fails
  the strict build rather than leaving an empty table.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path
from typing import Any

import click
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.plugins.kneuron")

# ----------------------------------------------------------------------------------------------- CLI reference


def _param_row(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        spelling = f"`{param.human_readable_name}`"
        kind = "argument" + (" (repeatable)" if param.nargs == -1 else "")
    else:
        names = list(param.opts) + list(param.secondary_opts)
        spelling = ", ".join(f"`{n}`" for n in names)
        kind = "flag" if getattr(param, "is_flag", False) else getattr(getattr(param, "type", None), "name", "value")
    default = param.default
    shown = "" if default is None or callable(default) or default == () else f"`{default}`"
    if param.required:
        shown = "required"
    help_text = " ".join((getattr(param, "help", None) or "").split()).replace("|", "\\|")
    return f"| {spelling} | {kind} | {shown} | {help_text} |"


def _command_markdown(command: click.Command, path: list[str], level: int) -> list[str]:
    lines = [f"{'#' * level} `{' '.join(path)}`", ""]
    text = inspect.cleandoc(command.help or "")
    if text:
        lines += [text, ""]
    params = [p for p in command.params if p.name != "help" and not getattr(p, "hidden", False)]
    if params:
        lines += ["| name | kind | default | help |", "| --- | --- | --- | --- |"]
        lines += [_param_row(p) for p in params]
        lines.append("")
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            sub = command.commands[name]
            if not getattr(sub, "hidden", False):
                lines += _command_markdown(sub, [*path, name], min(level + 1, 4))
    return lines


def cli_reference() -> str:
    """The CLI reference page: the typer app as a click tree, one section per command."""
    import typer.main

    from kneuron.cli import app

    root = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the typer app (`kneuron.cli.app`) when this site is built; `kneuron COMMAND --help` "
        "prints the same.",
        "",
    ]
    lines += _command_markdown(root, ["kneuron"], 2)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ study pages


def _studies() -> list[Any]:
    from kneuron.studies.registry import registered_studies

    return registered_studies()


def study_page(study: Any) -> str:
    """One study's page: what the registry knows of it, then its class's and module's docstrings."""
    cls = type(study)
    module = inspect.getmodule(cls)
    lines = [f"# {study.title} (`{study.name}`)", ""]
    lines += [
        f"- group: `{study.group}` (`kneuron study {study.group if study.group != 'opt-in' else study.name}`)",
        f"- needs the model: {'yes' if study.needs_model else 'no'}",
        f"- reads: {', '.join(f'[`{r}`]({r}.md)' for r in study.reads) or 'the atlas only'}",
        f"- changes weights: {'yes (the runner checks they are restored)' if study.changes_weights else 'no'}",
        f"- run it: `kneuron study {study.name} --run ATLAS`",
        f"- module: `{module.__name__ if module else cls.__module__}`",
        "",
    ]
    if study.options:
        lines += ["| option | type | default | help |", "| --- | --- | --- | --- |"]
        for option in study.options:
            bounds = ""
            if option.min is not None or option.max is not None:
                bounds = f" (in [{option.min if option.min is not None else ''}, "
                bounds += f"{option.max if option.max is not None else ''}])"
            lines.append(
                f"| `{option.cli_flag}` | {option.type.__name__} | `{option.default}` | "
                f"{option.help.replace('|', chr(92) + '|')}{bounds} |"
            )
        lines.append("")
    doc = inspect.getdoc(cls)
    if doc and doc != inspect.getdoc(cls.__mro__[1]):
        lines += ["## What it does", "", doc, ""]
    if module is not None and module.__doc__:
        lines += ["## Its module", "", inspect.cleandoc(module.__doc__), ""]
    return "\n".join(lines) + "\n"


def study_list() -> str:
    """The bullet list of every registered study, linking its generated page, in the registry's order."""
    return "\n".join(f"- [{s.title}]({s.name}.md) (`{s.name}`, {s.group})" for s in _studies())


# --------------------------------------------------------------------------------------------- results tables


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):  # 4 significant digits; a correlation near 1 keeps 6, to show how near
        return f"{value:.6g}" if 0.99 < abs(value) < 1 else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _machine(machine: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in machine.items() if value is not None)


def results_markdown(relative: str) -> str:
    """Markdown for one JSON results file (``benchmarks/json_results.py``, ``kneuron report --json``):
    ``{"command", "when", "tables": [{"title", "columns", "rows"}], "summary", "machine", "note"}`` (only
    ``command`` and ``tables`` required): who made it, each table, and the ``key=value`` summary line."""
    path = ROOT / relative
    if not path.is_file():
        raise FileNotFoundError(f"results file {relative} (named in a docs page) does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    made = f"Measured by `{data['command']}`" + (f" ({data['when']})" if data.get("when") else "")
    if data.get("machine"):
        made += f"; {_machine(data['machine'])}"
    lines = [made + f"; rendered from `{relative}`."]
    if data.get("note"):
        lines += ["", f"*{data['note']}*"]
    for table in data["tables"]:
        lines += ["", f"**{table['title']}**", "", "| " + " | ".join(_cell(c) for c in table["columns"]) + " |"]
        lines.append("| " + " | ".join("---" for _ in table["columns"]) + " |")
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
    if data.get("summary"):
        lines += ["", "```", " ".join(f"{key}={_cell(value)}" for key, value in data["summary"].items()), "```"]
    return "\n".join(lines) + "\n"


RESULTS = re.compile(r"<!-- results: (\S+) -->")

# ------------------------------------------------------------------------------------------------------ hooks


def on_files(files: Files, config: Any) -> Files:
    """Adds the generated pages (CLI reference, one page per study) to the site."""
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    for study in _studies():
        files.append(File.generated(config, f"studies/{study.name}.md", content=study_page(study)))
    return files


def on_nav(nav: Any, config: Any, files: Files) -> Any:
    """Puts the generated study pages under the Studies section of the navigation."""
    from mkdocs.structure.nav import Section
    from mkdocs.structure.pages import Page

    for item in nav.items:
        if isinstance(item, Section) and item.title == "Studies":
            for study in _studies():
                file = files.get_file_from_path(f"studies/{study.name}.md")
                item.children.append(Page(study.title, file, config))
    return nav


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fills the placeholders: the study list and the results tables."""
    markdown = markdown.replace("<!-- study-list -->", study_list())
    return RESULTS.sub(lambda m: results_markdown(m.group(1)), markdown)
