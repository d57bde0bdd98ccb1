# Two commands on a fresh machine (Python 3.10+ and make):
#   make demo   set up .venv, then explain one generation of the embedded model into outputs/demo/
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= a red circle on the left
OUT ?= outputs/demo

.PHONY: setup demo test docs notebooks lab clean

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

# The tests (the notebooks run top to bottom among them), then the docs site in strict mode: the build
# executes every notebook again and fails on any error or broken link.
test: setup
	$(BIN)/python -m pytest -q
	$(MAKE) docs

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "docs site: build/site/index.html"

# Step through the course in JupyterLab (installs it into .venv the first time)
lab: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[course]"
	$(BIN)/jupyter lab notebooks/

# Run the course notebooks, keep executed copies in build/notebooks/ and their times in docs/notebook_times.json
notebooks: setup
	$(BIN)/python scripts/run_notebooks.py

clean:
	rm -rf $(VENV) outputs build .cache .pytest_cache
