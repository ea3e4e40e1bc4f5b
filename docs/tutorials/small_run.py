# %% [markdown]
# # A small run and its studies
#
# A run over two relations of the built-in facts, one known fact each, written to an atlas; then the paper's
# studies on it. These are the commands `make demo` runs, on fewer facts and fewer steps (executed when the docs
# are built, one torch thread).

# %%
import os
import subprocess
import sys
import tempfile
from pathlib import Path

folder = Path(tempfile.mkdtemp(prefix="kneuron-tutorial-"))
atlas_path = folder / "small.sqlite"
env = {**os.environ, "OMP_NUM_THREADS": "1"}


def kneuron_cli(*args: str) -> None:
    """Runs one kneuron command (as `kneuron --threads 1 ...` in a shell) and shows what it printed."""
    done = subprocess.run([sys.executable, "-m", "kneuron.cli", "--threads", "1", *args], env=env,
                          capture_output=True, text=True)
    print(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)


kneuron_cli("run", "--facts", "builtin", "--relations", "capital,language", "--per-relation", "1",
            "--steps", "8", "--out", str(atlas_path))

# %%
kneuron_cli("study", "all", "--run", str(atlas_path))

# %% [markdown]
# The atlas is plain SQLite behind `kneuron.store.Atlas` (read-only here):

# %%
from kneuron.store import Atlas

atlas = Atlas.open(atlas_path, read_only=True)
[f.id for f in atlas.facts()]

# %%
atlas
