# Two commands on a fresh machine:
#   make demo   runs the main job (creates the project's environment in .venv on first use)
#   make test   runs the whole test suite (the same command CI runs)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test env addon clean

# One pip resolve for everything (torch 2.13.0 CPU + bpy 5.0.1 + numpy<2 must be resolved together).
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (bpy 5.0.1); set PYTHON=/path/to/python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e ".[all]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m blender_addon.demo --out demo_output $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

addon: $(STAMP)
	$(BIN)/python build_addon.py

clean:
	rm -rf $(VENV) dist demo_output .pytest_cache
