# Two commands matter: `make demo` and `make test`. Both set up .venv from scratch when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stepbus-installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: setup system demo gui test lint typecheck unit docs bench clean

setup: $(STAMP)

# torch is pinned first: the pinned CPU build installs from local disk in seconds, while an unpinned torch
# would pull a multi-GB CUDA build. pyproject keeps a range (torch>=2.6) that the pin satisfies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[all,dev,bench,docs]"
	touch $(STAMP)

# system packages: Xvfb for the GUI tests (installed with apt-get when it is missing and we may)
system:
	.ci/setup-system

demo: setup
	$(BIN)/stepbus train

gui: setup
	$(BIN)/stepbus gui

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

# the quick suite; `slow` holds what builds and installs whole environments (a wheel into a fresh venv)
unit: setup system
	$(BIN)/python -m pytest -m "not slow"

slow: setup system
	$(BIN)/python -m pytest -m slow

# the documentation site (README.md is the front door; docs/ the pages behind it): strict, so a broken link, a
# missing anchor or a page left out of mkdocs.yml's nav fails the build
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

test: lint typecheck docs unit slow

bench: setup
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.checkpoint
	$(BIN)/python -m benchmarks.gui
	$(BIN)/python -m benchmarks.strategies

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build/site
