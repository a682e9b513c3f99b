# KCM developer commands. `make test` and `make run` must work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint bench run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## The whole suite: unit, conformance (OASIS vectors) and integration tests, then ruff.
test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider --benchmark-disable
	$(BIN)/ruff check .

lint: $(STAMP)
	$(BIN)/ruff check .

## Codec micro-benchmarks; figures go to docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/codec_bench.py

## Starts core and gateway on loopback (completed by the kcm-core and kcm-gateway work).
run: $(STAMP)
	@echo "make run: kcm-core and kcm-gateway are not built yet (see README.rst, Status)." >&2
	@exit 1

clean:
	rm -rf $(VENV) build *.egg-info var
