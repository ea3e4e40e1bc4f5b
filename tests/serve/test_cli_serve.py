"""``kneuron serve`` as a command: it serves, it stops on Ctrl-C, and it refuses a missing atlas, a foreign file and
a taken port in one line (before any model loads)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from kneuron import cli

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_the_command_serves_until_interrupted(serve_atlas):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "kneuron.cli", "serve", "--run", str(serve_atlas), "--port", "0"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stderr.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert found, line
        url = found.group(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/health", timeout=5) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.1)
        assert health["atlas"] == str(serve_atlas.resolve()) and health["model"] is None
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"Knowledge neurons of" in response.read()
        assert "no model: pages only" in line
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    assert code == 0


def test_a_missing_atlas_is_one_line(tmp_path):
    result = runner.invoke(cli.app, ["serve", "--run", str(tmp_path / "none.sqlite"), "--port", "0"])
    assert result.exit_code == 1
    assert "No atlas at" in result.output and "Traceback" not in result.output


def test_a_file_that_is_not_an_atlas_is_one_line(tmp_path):
    other = tmp_path / "notes.sqlite"
    other.write_text("my notes")
    result = runner.invoke(cli.app, ["serve", "--run", str(other), "--port", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert other.read_text() == "my notes"


def test_a_taken_port_is_refused_before_the_model_loads(serve_atlas, fake_load):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(cli.app, ["serve", "--run", str(serve_atlas), "--port", str(port), "--model",
                                         "tiny-llama"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in result.output and "another --port" in result.output
    assert fake_load == {}  # refused before loading anything


def test_another_model_is_refused(serve_atlas, fake_load):
    result = runner.invoke(cli.app, ["serve", "--run", str(serve_atlas), "--port", "0", "--model", "tiny-gpt2"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "is another model" in result.output


def test_an_address_of_another_machine_is_refused_as_such(serve_atlas, fake_load):
    """``--host 8.8.8.8`` used to say that another program uses the port (issue 27, item 7)."""
    for host in ("8.8.8.8", "192.0.2.1"):
        result = runner.invoke(cli.app, ["serve", "--run", str(serve_atlas), "--port", "0", "--host", host],
                               env={"COLUMNS": "300"})
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"Cannot listen on {host}" in result.output and "not an address of this machine" in result.output
        assert "another program" not in result.output
