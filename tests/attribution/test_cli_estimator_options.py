"""An estimator option the chosen estimator does not use is refused in one line, not ignored silently
(``--estimator gxa --steps 50`` ran gxa, which has no steps; issue 27 item 7)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kneuron import cli

runner = CliRunner()


@pytest.mark.parametrize("command", [["find", "-p", "The capital of France is", "-a", "Paris"],
                                     ["run", "--out", "never.sqlite"]])
@pytest.mark.parametrize("estimator, options, unused", [
    ("gxa", ["--steps", "50"], "--steps"),
    ("gxa", ["--alphas", "gauss", "--steps", "3"], "--steps or --alphas"),
    ("lpi", ["--objective", "prob"], "--objective"),
])
def test_an_option_the_estimator_does_not_use_is_refused(tmp_path, monkeypatch, command, estimator, options,
                                                         unused):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, [*command, "--model", "/nowhere", "--estimator", estimator, *options],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"--estimator {estimator} does not use {unused}" in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before the model loads or the atlas is made


def test_the_defaults_of_unused_options_are_not_refused(tmp_path, monkeypatch):
    """Options left at their defaults are no request: gxa runs without a word about steps."""
    from kneuron.cli.app import parse_estimator

    assert parse_estimator("gxa", None, steps=20, objective="prob", alphas="right", given=()).params() == {
        "estimator": "gxa", "objective": "prob"}
    assert parse_estimator("ig", None, steps=7, objective="prob", alphas="gauss", given=("steps", "alphas")) is None
