# lorastyle: build and test. GNU make. `make` alone lists the targets.
#
# `make test` and `make book` create or update $(VENV) from the pinned
# requirements (requirements.txt, constrained by requirements-lock.txt) first.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
STAMP = $(VENV)/.installed
# The chapters run in a second, light environment: binder/requirements.txt (no torch), what Binder and
# Colab readers get; nbval runs there, so a chapter that needs more than a reader has fails `make test`.
BOOK_VENV ?= .venv-book
BOOK_PY = $(BOOK_VENV)/bin/python
BOOK_STAMP = $(BOOK_VENV)/.installed

# Thread caps and offline settings for every recipe (2-core machines; no hub downloads).
export OMP_NUM_THREADS := 2
export OPENBLAS_NUM_THREADS := 2
export MKL_NUM_THREADS := 2
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
# No MPLBACKEND here: notebook kernels must keep their inline backend, or figures vanish from the book.

NOTEBOOKS := $(wildcard book/*.ipynb)

# `make bench`: threads of the benchmarks (1 on a machine shared with `make data`), temporary folder
BENCH_THREADS ?= $(OMP_NUM_THREADS)
BENCH_TMP ?=
BENCHMARKS := b1_throughput b2_weights_vs_images b3_memory b4_retrieval b5_lowrank b6_cluster b8_family_fit b9_library b10_large_index

# `make fuzz`: inputs of the long fuzzing run, and real LoRA files used as extra seeds (if present).
FUZZ_INPUTS ?= 100000
REAL_LORAS ?= ../shared/real-loras

.PHONY: help venv test test-fast lint format fuzz book chapters data clean

help:
	@echo "Targets:"
	@echo "  make venv   create/update $(VENV) from requirements.txt + requirements-lock.txt, install lorastyle (editable)"
	@echo "  make test   run tests/ with pytest, then the book notebooks with nbval (in $(BOOK_VENV), the readers' light environment)"
	@echo "  make test-fast  the tests without those marked slow (no notebooks)"
	@echo "  make lint   check formatting and lint rules with ruff (part of make test); make format fixes them"
	@echo "  make fuzz   fuzz the file readers with $(FUZZ_INPUTS) mutated files; prints inputs and failures"
	@echo "  make book   execute the notebooks and build the Jupyter Book into _build/html (warnings are errors)"
	@echo "  make chapters  execute the notebooks in place (refresh the outputs nbval compares against)"
	@echo "  make data   build (or resume) the embedded LoRA collection in data/ (hours on 2 cores)"
	@echo "  make bench  run benchmarks/b1..b6 (hours, mostly B3 and B6: 2,000 sparse SDXL-size files each); tables in benchmarks/results/"
	@echo "  make clean  remove _build"

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c requirements-lock.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(STAMP)

$(BOOK_STAMP): binder/requirements.txt requirements-lock.txt pyproject.toml Makefile
	test -x $(BOOK_PY) || $(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_PY) -m pip install -q -r binder/requirements.txt pytest nbval nbclient -c requirements-lock.txt
	$(BOOK_PY) -m pip install -q --no-deps -e .
	touch $@

# The notebooks run under nbval beside the tests, not after them: the tests keep one core busy, the
# notebooks the other (run one after the other they took 15 min 46 s, over the 15-minute budget).
# Their report is printed after the tests'. pytest exit code 5 means "no tests collected": not a failure here.
NBVAL_LOG ?= $(BOOK_VENV)/nbval.log
# Chapters run on one thread and on one choice of OpenBLAS kernels, so that their saved outputs are
# the same on any x86 CPU: k-means in the clustering chapter lands elsewhere with the AVX2 (Haswell)
# kernels an AMD EPYC gets than with those an Intel Xeon got (ARI 0.011 against 0.013). Sandybridge's
# (AVX) run on every x86-64 CPU of the last decade.
CHAPTER_ENV := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_CORETYPE=Sandybridge
test: $(STAMP) $(BOOK_STAMP) lint
	@nb=; if [ -n "$(strip $(NOTEBOOKS))" ]; then \
		$(CHAPTER_ENV) $(BOOK_PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with book/nbval_sanitize.cfg \
			-p no:cacheprovider $(NOTEBOOKS) > $(NBVAL_LOG) 2>&1 & nb=$$!; fi; \
	rc=0; MPLBACKEND=Agg $(PY) -m pytest tests || rc=$$?; [ $$rc -eq 5 ] && rc=0; \
	nrc=0; if [ -n "$$nb" ]; then wait $$nb || nrc=$$?; [ $$nrc -eq 5 ] && nrc=0; \
		echo "--- notebooks (nbval, $(BOOK_VENV)) ---"; cat $(NBVAL_LOG); fi; \
	[ $$rc -eq 0 ] && [ $$nrc -eq 0 ]

# The tests without the long ones (marked slow: the smoke build, 1,000 files, UMAP): for a quick check
test-fast: $(STAMP) lint
	MPLBACKEND=Agg $(PY) -m pytest tests -m "not slow"

# ruff (pinned) formats and lints the code; a violation fails `make test`. `make format` fixes what it can.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

fuzz: $(STAMP)
	$(PY) -m tools.fuzz.fuzzing --inputs $(FUZZ_INPUTS) --real $(REAL_LORAS)

chapters: $(BOOK_STAMP)
	$(CHAPTER_ENV) $(BOOK_PY) book/run_chapters.py $(NOTEBOOKS)

# MathJax is served from the book, not a CDN: book/fetch_mathjax.py fetches it once from the npm
# registry into _build/mathjax (a no-op when present), which _config.yml's html_static_path lists.
book: $(STAMP)
	$(PY) book/fetch_mathjax.py
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

# One thread: on a 2-core machine shared with other work, 2 torch threads run slower than 1.
# LoRAs trained at once by `make data` (one process and one thread each)
JOBS ?= 2
data: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m lorastyle.collection.build --profile default --out data --jobs $(JOBS)
	$(PY) -m lorastyle.book.figures data

# Not timed tests: each script writes benchmarks/results/bN.json and bN.md, whatever the machine's speed.
bench: $(STAMP)
	cd benchmarks && for b in $(BENCHMARKS); do \
		OMP_NUM_THREADS=$(BENCH_THREADS) OPENBLAS_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
		../$(PY) $$b.py $(if $(BENCH_TMP),--tmp $(BENCH_TMP)) || exit 1; done

clean:
	rm -rf _build
