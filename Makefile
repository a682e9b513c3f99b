# KCM developer commands. `make test` and `make run` must work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# twistd finds the kcm plugins in ./twisted/plugins (an editable install does not expose them).
export PYTHONPATH := $(CURDIR)

.PHONY: test lint bench bench-core bench-gateway bench-fairness run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## The whole suite: unit, conformance (OASIS vectors) and integration tests, then ruff.
## Two pytest workers run everything but the tests that assert latencies or timings
## (marked serial), which then run alone on a quiet machine.
test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider --benchmark-disable -n 2 -m "not serial"
	$(BIN)/python -m pytest -p no:cacheprovider --benchmark-disable -m serial
	$(BIN)/ruff check .

lint: $(STAMP)
	$(BIN)/ruff check .

## Codec micro-benchmarks; figures go to docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/codec_bench.py

## kcm-core's durable Create/Revoke against PyKMIP's server (a few minutes); docs/benchmarks.md.
bench-core: $(STAMP)
	$(BIN)/python benchmarks/core_bench.py

## kcm-gateway's L4 operations against a bare Twisted TLS echo server, and a forwarded control
## operation against the core directly (about 2 minutes); docs/benchmarks.md.
bench-gateway: $(STAMP)
	$(BIN)/python benchmarks/gateway_bench.py

## Another tenant's latency at kcm-core while one tenant runs heavy Locate batches, against
## the idle core (about 2 minutes); docs/benchmarks.md.
bench-fairness: $(STAMP)
	$(BIN)/python benchmarks/fairness_bench.py

## kcm-core (KMIP 127.0.0.1:5696, gateway link 127.0.0.1:5697) in the background and
## kcm-gateway (KMIP 127.0.0.1:5698) in the foreground, with a development PKI (var/pki), an
## embedded SQLite store (var/kcm-core.db), the L1 key file var/l1.key and a demo tenant with
## service "app". The core logs to var/kcm-core.log; its pid is in var/kcm-core.pid and it is
## stopped when the gateway exits (Ctrl-C).
run: $(STAMP)
	@test -f var/pki/ca.pem || $(BIN)/kcm pki init var/pki
	@$(BIN)/kcm core init -c etc/kcm-core.toml
	@$(BIN)/kcm core bootstrap demo app -c etc/kcm-core.toml
	@echo
	@echo "kcm-gateway: KMIP over mutual TLS on 127.0.0.1:5698 (kcm-core behind it on 5696)."
	@echo "Connect applications to the gateway with PyKMIP, e.g."
	@echo "  $(BIN)/python -c 'from kmip.pie.client import ProxyKmipClient as C; from kmip import enums;"
	@echo "    c = C(hostname=\"127.0.0.1\", port=5698, cert=\"var/pki/app.pem\", key=\"var/pki/app.key\","
	@echo "          ca=\"var/pki/ca.pem\", config_file=\"/dev/null\"); c.open();"
	@echo "    print(c.create(enums.CryptographicAlgorithm.AES, 256))'      # a managed key (core)"
	@echo "An L4 DEK, served by the gateway itself: a Create with the custom attribute x-kcm-level = L4,"
	@echo "then Get / Encrypt / Decrypt with its l4. token -- see examples/pykmip_l4.py:"
	@echo "  $(BIN)/python examples/pykmip_l4.py"
	@echo "(see README.rst). Ctrl-C stops both."
	@echo
	@$(BIN)/twistd -n --pidfile= kcm-core -c etc/kcm-core.toml > var/kcm-core.log 2>&1 & \
	core=$$!; echo $$core > var/kcm-core.pid; \
	trap 'kill $$core 2>/dev/null; rm -f var/kcm-core.pid' EXIT; trap 'exit 130' INT TERM; \
	for i in $$(seq 100); do \
	  $(BIN)/python -c 'import socket; socket.create_connection(("127.0.0.1", 5697), 0.2)' \
	    2>/dev/null && break; \
	  kill -0 $$core 2>/dev/null || { tail -20 var/kcm-core.log; exit 1; }; \
	  sleep 0.1; \
	done; \
	$(BIN)/twistd -n --pidfile= kcm-gateway -c etc/kcm-gateway.toml

clean:
	rm -rf $(VENV) build *.egg-info var .cache
