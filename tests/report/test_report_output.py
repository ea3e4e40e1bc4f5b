"""Where `kneuron report` writes (issue #10, item 5): only to the given path, replacing only a kneuron report,
and every path it cannot write gives one `error:` line, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.store import run
from store.helpers import RUN_ARGS, tiny_facts
from store.test_atlas_errors import read_only
from tiny_models import tiny_lm

runner = CliRunner()


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "atlas" / "a.sqlite"
    path.parent.mkdir()
    run(tiny_lm("llama"), tiny_facts()[:2], path, **RUN_ARGS)
    return path


def report(atlas_path, *extra):
    result = runner.invoke(cli.app, ["report", "--run", str(atlas_path), *map(str, extra)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result, errors


def assert_one_error(result, errors, text):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    assert len(errors) == 1 and text in errors[0], result.stderr


def test_a_read_only_folder_gives_one_line(atlas_path, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only(folder):
        result, errors = report(atlas_path, "--out", folder / "r.html")
    assert_one_error(result, errors, "Cannot write the report to")
    assert list(folder.iterdir()) == []


def test_a_folder_as_out_gives_one_line(atlas_path, tmp_path):
    result, errors = report(atlas_path, "--out", tmp_path)
    assert_one_error(result, errors, "is a folder")


def test_a_parent_that_is_a_file_gives_one_line(atlas_path, tmp_path):
    (tmp_path / "file").write_text("mine")
    result, errors = report(atlas_path, "--out", tmp_path / "file" / "r.html")
    assert_one_error(result, errors, "Cannot write the report to")
    assert (tmp_path / "file").read_text() == "mine"


def test_missing_parent_folders_are_created(atlas_path, tmp_path):
    out = tmp_path / "new" / "deeper" / "r.html"
    result, _ = report(atlas_path, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_a_file_that_is_not_a_report_is_not_replaced(atlas_path, tmp_path):
    out = tmp_path / "notes.html"
    out.write_text("<html>my own page</html>")
    result, errors = report(atlas_path, "--out", out)
    assert_one_error(result, errors, "is not a kneuron report")
    assert out.read_text() == "<html>my own page</html>"
    result, errors = report(atlas_path, "--out", atlas_path)  # not even the atlas itself
    assert_one_error(result, errors, "is not a kneuron report")


def test_a_report_replaces_a_report_and_leaves_nothing_else(atlas_path, tmp_path):
    out = tmp_path / "r.html"
    assert report(atlas_path, "--out", out)[0].exit_code == 0
    first = out.read_text(encoding="utf-8")
    assert 'content="kneuron report"' in first
    out.write_text(first.replace("facts.</p>", "facts (edited).</p>"), encoding="utf-8")
    assert report(atlas_path, "--out", out)[0].exit_code == 0
    assert out.read_text(encoding="utf-8") == first
    old = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Knowledge neurons: a.sqlite</title>'
    out.write_text(old + "<body>a report of an older kneuron</body></html>", encoding="utf-8")
    assert report(atlas_path, "--out", out)[0].exit_code == 0
    assert out.read_text(encoding="utf-8") == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_the_report_opens_with_the_headline_and_folds_the_parameters_at_the_end():
    """The first heading after the title and the first table are the headline; the run's raw parameters (with
    markup in a value, escaped) are in one <details> at the very end of the body."""
    import re

    from kneuron.report import ReportData, render_report

    meta = {"model": "tiny <b>model</b>", "params": {"chunk_facts": 8, "steps": 20},
            "generic": {"min_facts": 2, "share": 0.1}}
    text = render_report(ReportData({}, meta, 3))
    body = text[text.index("<body>") + len("<body>"):text.index("</body>")]
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", body)[0] == "Headline"
    first_table = body.index("<table>")
    assert body.index("<h2>Headline</h2>") < first_table < body.index("<details")
    assert "measure</th>" in body[first_table:body.index("</table>")]
    assert "<ul" not in body and body.count('<details id="parameters">') == 1
    details = body[body.index('<details id="parameters">'):]
    assert details.endswith("</details>")
    for key in ("params.chunk_facts", "params.steps", "generic.min_facts", "generic.share", "model"):
        assert f"<code>{key}</code>" in details
        assert f"<code>{key}</code>" not in body[:body.index('<details id="parameters">')]
    assert "tiny &lt;b&gt;model&lt;/b&gt;" in details and "<b>model</b>" not in text
    assert "Run parameters (5)" in details
