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

# The tests (the notebooks and the browser among them), then the docs site in strict mode: the build
# executes every notebook again and fails on any error or broken link.
test: setup browser
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
