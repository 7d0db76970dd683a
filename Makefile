# Two commands set everything up on a fresh machine (see README.md):
#   make demo   install into .venv if needed, then run ParaTAA on the trained digits DiT (models/digits) on the CPU
#   make test   install into .venv if needed, then lint (ruff) and run the test suite (the metrics extra included: its tests need it)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,metrics]"
	touch $@

demo: install
	$(PY) parallel_dit.py --model_path digits --class_labels 0 1 2 3 4 5 6 7 8 9 --timesteps 50 --output_path runs/demo --check_sequential

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest
