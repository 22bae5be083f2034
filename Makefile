# The two commands of the README: `make book` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Generated data (MiniTex-AD) and caches live in ./data, which git ignores.
export CCAD_CACHE ?= $(CURDIR)/data
# The book and the tests run the chapters in fast mode (offline, CPU).
export CCAD_MODE ?= fast

.PHONY: help venv data book test lint bench bench-quick clean

help:
	@echo "make book   - build the executed book into _build/html (fast mode, embedded data)"
	@echo "make test   - run the whole test suite (what CI runs)"
	@echo "make data   - generate the embedded MiniTex-AD data set into ./data"
	@echo "make bench  - regenerate benchmarks/results/*.json (hours on 2 CPU cores; cached, resumable)"
	@echo "make bench-quick - every benchmark script on tiny settings (a few minutes)"

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

data: venv
	$(PY) -m ccad_tutorial make-data --out $(CCAD_CACHE)/minitex-ad_s128_seed0

# Kernels must draw figures inline: under MPLBACKEND=Agg a chapter's matplotlib figures
# reach the book as the text "<Figure size ... with N Axes>".
book: venv data
	env -u MPLBACKEND $(VENV)/bin/jupyter-book build . --all -W --keep-going

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv lint
	$(PY) -m pytest -q --durations=20; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; \
	exit $$rc

# Order matters only for speed: later scripts reuse the cells (runs/bench) earlier ones trained.
BENCH_SCRIPTS := minitex_table convergence condition_swap inference_ablation xi_ablation condition_at_work

bench: venv data
	for s in $(BENCH_SCRIPTS); do $(PY) benchmarks/$$s.py || exit 1; done

bench-quick: venv data
	for s in $(BENCH_SCRIPTS); do $(PY) benchmarks/$$s.py --quick --root runs/bench-quick || exit 1; done

clean:
	rm -rf _build .pytest_cache
