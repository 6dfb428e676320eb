# The two commands of a fresh machine: `make demo` and `make test`.
# jaxseg needs Python 3.11 or newer (jax 0.10, orbax-checkpoint 0.12 and grain 0.2.18 do). The first
# of these that runs and is new enough is used; 3.11 first, the version constraints.txt was made
# with. Choose another with `make PYTHON=/path/to/python3.x ...`.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3.11 python3.12 python3.13 python3.14 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/jaxseg: pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "make: jaxseg needs Python 3.11 or newer (python3.11 ... python3.14); none was found on PATH. Install one, or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(BIN)/jaxseg

install: $(BIN)/jaxseg

demo: install
	$(BIN)/jaxseg demo

# Two worker processes, each test file on one of them (its module fixtures built once): on 2 cores
# the suite spends part of its time in subprocesses, browsers and file I/O, which the other
# worker's computation fills.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) demo_output
