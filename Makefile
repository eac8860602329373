# Two commands on a fresh machine:
#   make demo   runs the main job (creates the project's environment in .venv on first use)
#   make test   runs the whole test suite (the same command CI runs)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Blender 4.2 LTS, for the add-on's tests: its own small environment, no torch in it.
VENV42 := .venv-bpy42
STAMP42 := $(VENV42)/.installed-stamp

.PHONY: demo test test-main test-bpy42 env addon clean train-demo

define make_venv
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (bpy); set PYTHON=/path/to/python3.11"'
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --disable-pip-version-check -e ".[$(2)]"
	touch $(1)/.installed-stamp
endef

# One pip resolve for everything (torch 2.13.0 CPU + bpy 5.0.1 + numpy<2 must be resolved together).
$(STAMP): pyproject.toml
	$(call make_venv,$(VENV),all)

$(STAMP42): pyproject.toml
	$(call make_venv,$(VENV42),test-bpy42)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m blender_addon.commands.demo --out demo_output $(DEMO_ARGS)

# The small demo model, trained from scratch on the CPU (about two hours on 2 cores; not part of
# `make demo` or the tests). Resumable: run it again after a stop and finished steps are skipped.
# TRAIN_THREADS sets torch's threads (default 1: fastest on a busy machine).
TRAIN_DEMO_OUT ?= train_demo
train-demo: $(STAMP)
	$(BIN)/python -m animate_backend.train.demo_recipe --out $(TRAIN_DEMO_OUT) $(TRAIN_DEMO_ARGS)

test: test-main test-bpy42

test-main: $(STAMP)
	$(BIN)/python -m pytest

# The in-process runner needs torch inside Blender's Python: it is tested under bpy 5.0.1 above.
test-bpy42: $(STAMP) $(STAMP42)
	ANIMATE_BACKEND_PYTHON=$(CURDIR)/$(BIN)/python $(VENV42)/bin/python -m pytest tests/blender_addon \
		--deselect tests/blender_addon/test_operators.py::test_in_process_runner_gives_the_same_result

addon: $(STAMP)
	$(BIN)/python build_addon.py

clean:
	rm -rf $(VENV) $(VENV42) dist demo_output .pytest_cache
