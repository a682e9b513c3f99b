# KCM developer commands. `make test` and `make run` must work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# twistd finds the kcm plugins in ./twisted/plugins (an editable install does not expose them).
export PYTHONPATH := $(CURDIR)

.PHONY: test lint bench bench-core run clean

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

## kcm-core's durable Create/Revoke against PyKMIP's server (a few minutes); docs/benchmarks.md.
bench-core: $(STAMP)
	$(BIN)/python benchmarks/core_bench.py

## kcm-core on 127.0.0.1:5696 with a development PKI (var/pki), an embedded SQLite store
## (var/kcm-core.db), the L1 key file var/l1.key and a demo tenant with service "app".
run: $(STAMP)
	@test -f var/pki/ca.pem || $(BIN)/kcm pki init var/pki
	@$(BIN)/kcm core init -c etc/kcm-core.toml
	@$(BIN)/kcm core bootstrap demo app -c etc/kcm-core.toml
	@echo
	@echo "kcm-core: KMIP over mutual TLS on 127.0.0.1:5696. Connect with PyKMIP, e.g."
	@echo "  $(BIN)/python -c 'from kmip.pie.client import ProxyKmipClient as C; from kmip import enums;"
	@echo "    c = C(hostname=\"127.0.0.1\", port=5696, cert=\"var/pki/app.pem\", key=\"var/pki/app.key\","
	@echo "          ca=\"var/pki/ca.pem\", config_file=\"/dev/null\"); c.open();"
	@echo "    print(c.create(enums.CryptographicAlgorithm.AES, 256))'"
	@echo "(see README.rst). Ctrl-C stops it."
	@echo
	$(BIN)/twistd -n --pidfile= kcm-core -c etc/kcm-core.toml

clean:
	rm -rf $(VENV) build *.egg-info var .cache
