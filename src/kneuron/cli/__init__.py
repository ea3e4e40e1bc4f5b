"""The ``kneuron`` command line: one typer app (:mod:`kneuron.cli.app`), its commands in one module per group.

- :mod:`~kneuron.cli.model_commands`: predict, models, find, facts (ask a model directly);
- :mod:`~kneuron.cli.atlas_commands`: run, atlas, export (write and read an atlas);
- :mod:`~kneuron.cli.study_commands`: study, report;
- :mod:`~kneuron.cli.edit_commands`: edit, erase;
- :mod:`~kneuron.cli.serve_command`: serve (a web app over an atlas).

Importing this package registers every command on :data:`app`.
"""

from kneuron.cli import (  # noqa: F401 (registers)
    atlas_commands,
    edit_commands,
    model_commands,
    serve_command,
    study_commands,
)
from kneuron.cli.app import app, command, console, err_console, fail, load_model, quiet_transformers
from kneuron.errors import KneuronError

__all__ = ["app", "command", "console", "err_console", "fail", "load_model", "main", "quiet_transformers"]


def main() -> None:
    """Entry point of the ``kneuron`` script."""
    try:
        app()
    except KneuronError as exc:  # raised outside a command (e.g. in a callback)
        raise SystemExit(fail(exc).exit_code) from None
