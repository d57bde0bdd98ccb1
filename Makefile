# Two commands on a fresh machine (Python 3.10+ and make):
#   make demo   set up .venv, then explain one generation of the embedded model into outputs/demo/
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROMPT ?= a red circle on the left
OUT ?= outputs/demo

.PHONY: setup browser demo test docs notebooks lab clean

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

# The report test drives Debian's Chromium through Playwright (Playwright's own browser download does not
# work offline). Installed once, when missing, where apt-get is; elsewhere install Chromium yourself.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test (once)"; \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "no chromium and no apt-get: install Chromium to run the browser test (it is skipped without one, outside CI)"; fi; }

# The tests (the notebooks and the browser among them), then the docs site in strict mode, which fails on
# any broken link and on anything a classroom without internet could not load.
test: setup browser
	$(BIN)/python -m pytest -q
	$(MAKE) docs

# The site shows the executed notebooks in build/notebooks/. The notebook tests write them, so after
# `pytest` nothing runs twice; a copy older than its notebook or the package is executed again here.
NOTEBOOK_FILES := $(wildcard notebooks/*.ipynb)
EXECUTED := $(patsubst notebooks/%,build/notebooks/%,$(NOTEBOOK_FILES))
PACKAGE_FILES := $(shell find illustrated_sd -type f -not -path '*/__pycache__/*')

build/notebooks/%.ipynb: notebooks/%.ipynb $(PACKAGE_FILES) | setup
	$(BIN)/python scripts/run_notebooks.py $< --times build/notebook_times.json

docs: setup $(EXECUTED)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/illustrated-sd export-web build/site/live --force   # the live page the docs link to (mkdocs build empties build/site first)
	@echo "docs site: build/site/index.html (the live page needs serving: illustrated-sd serve build/site/live)"

# Step through the course in JupyterLab (installs it into .venv the first time)
lab: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[course]"
	$(BIN)/jupyter lab notebooks/

# Run the course notebooks, keep executed copies in build/notebooks/ and their times in docs/notebook_times.json
notebooks: setup
	$(BIN)/python scripts/run_notebooks.py

clean:
	rm -rf $(VENV) outputs build .cache .pytest_cache
