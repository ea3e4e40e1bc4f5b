"""A refusal costs nothing: every absurd size is refused by arithmetic on the arguments, before anything
proportional to it is allocated. Each case runs in one child process whose address space is capped at 3 GB (a
billion steps once built 8 GB of α points, or a 7.2 GB eigenproblem for 30,000 Gauss–Legendre points, before any
check), and must end in one KneuronError line, not in a MemoryError or a kill."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

#: the child's address-space cap (bytes): torch and transformers import well below it
CAP = 3 * 10**9
BILLION = 10**9

#: what the child runs: each case is (name, the Python statement that must raise a KneuronError)
CHILD = r'''
import json, sys, traceback
from typer.testing import CliRunner
from kneuron import cli
from kneuron.attribution import IntegratedGradients, alpha_points, integrated_gradients
from kneuron.attribution.knowledge import resolve_estimator
from kneuron.attribution.two_stage import TwoStageIntegratedGradients
from kneuron.errors import KneuronError
from kneuron.facts import Fact
from kneuron.store import run
from tiny_models import tiny_lm

folder, out = sys.argv[1], sys.argv[2]
lm = tiny_lm("llama")
fact = Fact("France", "capital", "Paris", templates=("The capital of [X] is [Y].",))
B = 10**9
runner = CliRunner()

def cli_case(*args):
    result = runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})
    if isinstance(result.exception, MemoryError) or result.exit_code != 1:
        raise RuntimeError(f"exit {result.exit_code}: {result.exception!r} {result.output[-300:]}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    raise KneuronError(lines[-1] if len(lines) == 1 else f"{len(lines)} lines: {lines}")

P = ["-p", "The capital of France is", "-a", "Paris"]
cases = {
    "IntegratedGradients(steps=10**9)": lambda: IntegratedGradients(steps=B),
    "IntegratedGradients(steps=10**8)": lambda: IntegratedGradients(steps=10**8),
    "IntegratedGradients(steps=30000, alphas='gauss')": lambda: IntegratedGradients(steps=30000, alphas="gauss"),
    "TwoStageIntegratedGradients(steps=10**9)": lambda: TwoStageIntegratedGradients(steps=B),
    "resolve_estimator('ig', steps=10**9)": lambda: resolve_estimator("ig", steps=B),
    "alpha_points(30000, 'gauss')": lambda: alpha_points(30000, "gauss"),
    "integrated_gradients(steps=10**9)": lambda: integrated_gradients(lm, "The capital of France is", "Paris",
                                                                      steps=B),
    "integrated_gradients(steps=10**7, memory_budget='1KiB')": lambda: integrated_gradients(
        lm, "The capital of France is", "Paris", steps=B // 100, memory_budget="1KiB"),
    "run(steps=10**9)": lambda: run(lm, [fact], out, steps=B, progress=False, known_only=False),
    "kneuron find --steps 1e9": lambda: cli_case("find", "--model", folder, *P, "--steps", str(B)),
    "kneuron find --alphas gauss --steps 30000": lambda: cli_case("find", "--model", folder, *P, "--alphas",
                                                                  "gauss", "--steps", "30000"),
    "kneuron run --steps 1e9": lambda: cli_case("run", "--model", folder, "--out", out, "--steps", str(B)),
    "kneuron --threads 1e9": lambda: cli_case("--threads", str(B), "predict", "--model", folder, "Paris is"),
}
results = {}
for name, case in cases.items():
    try:
        case()
        results[name] = "accepted"
    except KneuronError as exc:
        results[name] = "refused: " + str(exc)
    except BaseException as exc:  # a MemoryError is what the cap turns an allocation into
        results[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, str]:
    from tiny_models import tiny_lm

    folder = tmp_path_factory.mktemp("model") / "tiny"
    lm = tiny_lm("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    out = folder.parent / "never.sqlite"

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "tests")]),
           "OMP_NUM_THREADS": "1"}
    # a bound, not a timing: each refusal is arithmetic, and without the fix the cap ends the child first
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out)], capture_output=True, text=True,
                          env=env, preexec_fn=capped, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not out.exists()  # nothing was written: every refusal came before the atlas
    return json.loads(done.stdout.strip().splitlines()[-1])


CASES = {
    "IntegratedGradients(steps=10**9)": r"steps=1,000,000,000 is too many even for one layer .* 2\.0 GiB",
    "IntegratedGradients(steps=10**8)": r"steps=100,000,000 is too many",
    "IntegratedGradients(steps=30000, alphas='gauss')": r"'gauss' takes at most 1,000 points; got steps=30,000",
    "TwoStageIntegratedGradients(steps=10**9)": r"steps=1,000,000,000 is too many",
    "resolve_estimator('ig', steps=10**9)": r"steps=1,000,000,000 is too many",
    "alpha_points(30000, 'gauss')": r"'gauss' takes at most 1,000 points",
    "integrated_gradients(steps=10**9)": r"steps=1,000,000,000 is too many",
    "integrated_gradients(steps=10**7, memory_budget='1KiB')": r"steps=10,000,000 is too many .* 1\.0 KiB",
    "run(steps=10**9)": r"steps=1,000,000,000 is too many",
    "kneuron find --steps 1e9": r"^error: steps=1,000,000,000 is too many",
    "kneuron find --alphas gauss --steps 30000": r"^error: alphas 'gauss' takes at most 1,000 points",
    "kneuron run --steps 1e9": r"^error: steps=1,000,000,000 is too many",
    "kneuron --threads 1e9": r"^error: --threads 1,000,000,000 is more than the \d+ CPUs",
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_in_one_line_under_a_memory_cap(refusals, name):
    import re

    outcome = refusals[name]
    assert outcome.startswith("refused: "), outcome
    message = outcome.removeprefix("refused: ")
    assert "\n" not in message and re.search(CASES[name], message), message


def test_gauss_legendre_up_to_its_maximum_still_integrates():
    """The cap is the only change: 1,000 points still give weights summing to 1 on [0, 1]."""
    from kneuron.attribution.integrated_gradients import alpha_points, alpha_weights
    from kneuron.attribution.limits import MAX_GAUSS_POINTS

    points, weights = alpha_points(MAX_GAUSS_POINTS, "gauss"), alpha_weights(MAX_GAUSS_POINTS, "gauss")
    assert len(points) == MAX_GAUSS_POINTS and abs(float(weights.sum()) - 1.0) < 1e-12
    assert float((weights * points**3).sum()) == pytest.approx(0.25, rel=1e-12)  # ∫₀¹ α³ dα
