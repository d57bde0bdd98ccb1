# Two commands on a fresh machine (Python 3.10+ and make):
#   make demo   set up .venv, then explain one generation of the embedded model into outputs/demo/
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= a red circle on the left
OUT ?= outputs/demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# Reinstall when the dependency lists change. torch is pinned to the CPU wheel through constraints.txt;
# an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/illustrated-sd explain "$(PROMPT)" --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
