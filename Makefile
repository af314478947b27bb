# Quick start: `make demo` (set up, then run the main job) and `make test` (set up, then the test suite).
# Setup pins torch==2.13.0, the CPU build this project's CI machine installs from local disk;
# the package itself only asks for torch>=2.1.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test test-slow lint bench clean check-plain-install test-spandrel

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/ssmir --version
	$(VENV)/bin/ssmir restore --sample -o demo-output --overwrite

test: setup
	$(VENV)/bin/ruff check ssmir tests benchmarks tools
	$(PY) -m pytest -q

# A plain `pip install .` (no extras) in a fresh environment must restore a photo: CI runs this.
PLAIN_VENV ?= .venv-plain
check-plain-install:
	rm -rf $(PLAIN_VENV) plain-output
	python3 -m venv $(PLAIN_VENV)
	$(PLAIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(PLAIN_VENV)/bin/python -m pip install -q "$(TORCH_PIN)"
	$(PLAIN_VENV)/bin/python -m pip install -q .
	$(PLAIN_VENV)/bin/ssmir restore --sample -o plain-output

# spandrel imports torchvision, which has no build for the CPU torch pinned above: its tests run in a second
# environment with torch 2.14.1 and torchvision 0.29.1 (both on this project's CI disk).
SPANDREL_VENV ?= .venv-spandrel
SPANDREL_TORCH ?= torch==2.14.1 torchvision==0.29.1
test-spandrel:
	test -x $(SPANDREL_VENV)/bin/python || python3 -m venv $(SPANDREL_VENV)
	$(SPANDREL_VENV)/bin/python -m pip install -q --upgrade pip
	$(SPANDREL_VENV)/bin/python -m pip install -q $(SPANDREL_TORCH)
	$(SPANDREL_VENV)/bin/python -m pip install -q -e ".[spandrel]" pytest
	$(SPANDREL_VENV)/bin/python -m pytest -q tests/integrations/test_spandrel.py

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/bench_scan.py

clean:
	rm -rf $(VENV) $(PLAIN_VENV) $(SPANDREL_VENV) .pytest_cache .ruff_cache demo-output plain-output
