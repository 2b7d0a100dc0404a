# neurodec: the two set-up commands of the README.
#   make demo   simulate the demo cohort and run the main job on it
#   make test   run the test suite
# Both create .venv/ and install neurodec into it first, when needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.neurodec-installed
DEMO_DIR ?= .neurodec/demo

.PHONY: install demo test benchmark clean

install: $(STAMP)

# Re-install only when the project's dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/neurodec demo --out $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest

benchmark: install
	$(BIN)/python benchmarks/loader.py

clean:
	rm -rf $(VENV) .pytest_cache .neurodec
