# The two commands of a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/jaxseg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/jaxseg

install: $(BIN)/jaxseg

demo: install
	$(BIN)/jaxseg demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_output
