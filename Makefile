# The two commands of the README: `make book` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Generated data (MiniTex-AD) and caches live in ./data, which git ignores.
export CCAD_CACHE ?= $(CURDIR)/data
# The book and the tests run the chapters in fast mode (offline, CPU).
export CCAD_MODE ?= fast

# Python 3.12: a second venv for the fast tests (.ci/run runs them after `make test`).
# PYTHON312 defaults to the first python3.12 that runs: on PATH, else pyenv's (whose shim
# fails when 3.12 is not the selected pyenv version).
ifeq ($(origin PYTHON312),undefined)
PYTHON312 := $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c "" 2>/dev/null && { command -v "$$p"; break; }; done)
endif
VENV312 ?= .venv312
# Where .venv312 takes torch and torchvision from; empty: PyPI (the CUDA build, ~4 GB).
# CI sets https://download.pytorch.org/whl/cpu (the CPU build, a tenth of the download).
TORCH_INDEX312 ?=
# The edit-test loop: everything but the tests that train, execute chapters or build the book.
FAST_TESTS := not slow and not notebook and not book
# pytest's exit code 5 (no test collected) is a failure here, never a pass.
PYTEST_RC = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; exit $$rc

.PHONY: help venv data book test test-fast test-py312 python312 lint repo-url bench bench-quick clean

help:
	@echo "make book   - build the executed book into _build/html (fast mode, embedded data)"
	@echo "make test   - run the whole test suite (what CI runs)"
	@echo "make test-fast  - the tests without slow, notebook and book ones (a few minutes)"
	@echo "make test-py312 - test-fast under Python 3.12, in .venv312 (PYTHON312=...)"
	@echo "make repo-url URL=https://github.com/OWNER/NAME - point the book at a fork"
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
	$(PY) -m pytest -q --durations=20; $(PYTEST_RC)

test-fast: venv
	$(PY) -m pytest -q -m "$(FAST_TESTS)" --durations=10; $(PYTEST_RC)

# The `*` in .venv312/.gitignore keeps the venv out of git and ruff.
$(VENV312)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -n "$(PYTHON312)" || { echo "no python3.12 found: make test-py312 PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	echo '*' > $(VENV312)/.gitignore
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX312),$(VENV312)/bin/python -m pip install --quiet --index-url $(TORCH_INDEX312) torch torchvision)
	$(VENV312)/bin/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(VENV312)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

python312:
	@echo $(PYTHON312)

test-py312: $(VENV312)/.installed
	$(VENV312)/bin/python -m pytest -q -m "$(FAST_TESTS)" --durations=10; $(PYTEST_RC)

# The repository's URL lives in _config.yml (repository.url); this rewrites every copy of it
# (install cells, Colab badges, README, the published book's address) to URL.
repo-url:
	@test -n "$(URL)" || { echo "usage: make repo-url URL=https://github.com/OWNER/NAME"; exit 1; }
	$(PYTHON) tools/set_repo_url.py $(URL)

# Order matters only for speed: later scripts reuse the cells (runs/bench) earlier ones trained.
BENCH_SCRIPTS := minitex_table convergence condition_swap inference_ablation xi_ablation condition_at_work

bench: venv data
	for s in $(BENCH_SCRIPTS); do $(PY) benchmarks/$$s.py || exit 1; done

bench-quick: venv data
	for s in $(BENCH_SCRIPTS); do $(PY) benchmarks/$$s.py --quick --root runs/bench-quick || exit 1; done

clean:
	rm -rf _build .pytest_cache
