"""``kneuron report --json PATH`` replaces an earlier findings file, never a user's file of that name."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kneuron import cli

runner = CliRunner()


def test_json_replaces_only_a_findings_file(tmp_path):
    from serve.conftest import make_atlas

    atlas = make_atlas(tmp_path / "a.sqlite")
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}\n', encoding="utf-8")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    for target in (mine, folder):
        result = runner.invoke(cli.app, ["report", "--run", str(atlas), "--json", str(target)],
                               env={"COLUMNS": "200"})
        assert result.exit_code == 1, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "is not a kneuron findings file" in errors[0], result.stderr
    assert mine.read_text(encoding="utf-8") == '{"my": "notes"}\n' and folder.is_dir() and not any(folder.iterdir())
    assert not list(tmp_path.glob(".*.tmp"))

    out = tmp_path / "data" / "findings.json"
    for _ in range(2):  # written, then its own earlier file replaced
        result = runner.invoke(cli.app, ["report", "--run", str(atlas), "--json", str(out)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
    assert json.loads(out.read_text(encoding="utf-8"))["facts"] > 0
