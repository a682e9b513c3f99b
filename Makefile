# KCM developer commands. `make test` and `make run` must work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The install is editable in setuptools' "compat" mode: a .pth file puts the checkout on
# sys.path, so .venv/bin/twistd finds the kcm plugins in ./twisted/plugins without PYTHONPATH
# (the default editable mode maps the packages but hides that directory from twistd). A
# virtualenv installed before that still needs the checkout on PYTHONPATH: keep it here.
export PYTHONPATH := $(CURDIR)

.PHONY: install constraints test bytecode lint bench bench-locate bench-core bench-core-pg bench-gateway bench-workers bench-fairness bench-cluster bench-sdk bench-soak run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

## Every package at the version constraints.txt pins, build dependencies (setuptools, wheel)
## too: what PyPI publishes later changes nothing until constraints.txt changes. pip first
## (--build-constraint needs pip 25.3), also in a .venv made before.
$(STAMP): $(BIN)/python constraints.txt setup.cfg setup.py pyproject.toml kcm/kernel/_plain_scan.c \
		kcm/_tls_calls.c kcm/ttlv/_item_count.c
	$(BIN)/pip install --quiet -c constraints.txt pip
	$(BIN)/pip install --quiet -c constraints.txt --build-constraint constraints.txt \
		-e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

## Byte-compiled modules of the checkout, written whatever PYTHONDONTWRITEBYTECODE says: the
## tests start a few hundred kcm processes, and each would otherwise compile every module it
## imports again (about 0.2 s a start). Python checks each file's source before using it.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 kcm twisted tests benchmarks

## `make` alone: the editable install (made again when setup.* or a C module changed, as
## after a pull that brings a new release), then the byte-compiled modules. (The default
## goal was the first rule's, the virtualenv alone: on a checkout that had one, `make` did
## nothing, and an upgraded checkout kept the C modules of the release before.)
install: $(STAMP) bytecode
.DEFAULT_GOAL := install

## The whole suite: unit, conformance (OASIS vectors) and integration tests, then ruff.
## Three pytest workers run everything but the tests that assert latencies or timings
## (marked serial), which then run alone on a quiet machine. Three on a 2-core machine:
## many end-to-end tests spend seconds waiting (for a timeout, a restart, PyKMIP's own
## sleeps), which a third worker fills; a fourth gains nothing more.
## pytest runs with PYTHONDONTWRITEBYTECODE unset: it keeps each test module as it rewrote
## its asserts only where it may write bytecode, and rewriting all of them took every pytest
## process (each worker, and the serial part) about 10 s of CPU at each collection.
test: $(STAMP) bytecode
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -p no:cacheprovider --benchmark-disable -n 3 --dist worksteal -m "not serial"
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -p no:cacheprovider --benchmark-disable -m serial
	$(BIN)/ruff check .

## constraints.txt again from the newest releases on PyPI (a fresh virtualenv with pip,
## setuptools, wheel and '.[test]', then pip freeze), and requirements-deploy.txt, the
## runtime packages at those versions with their hashes (pip-compile, in that virtualenv
## after the freeze), for production installs (docs/deploy.md). Then `make test`, and
## commit both files. If a step fails, both files are put back as they were (else `make`
## would install pins no test ran, and production would have no lock).
CONSTRAINTS_VENV := build/constraints-venv
constraints:
	rm -rf $(CONSTRAINTS_VENV) constraints.txt.new
	$(PYTHON) -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(CONSTRAINTS_VENV)/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	{ sed -n '/^#/p' constraints.txt; \
	  $(CONSTRAINTS_VENV)/bin/pip freeze --all --exclude-editable --exclude kcm; } > constraints.txt.new
	cp constraints.txt requirements-deploy.txt $(CONSTRAINTS_VENV)/
	mv constraints.txt.new constraints.txt && rm -f requirements-deploy.txt && \
	$(CONSTRAINTS_VENV)/bin/pip install --quiet -c constraints.txt pip-tools && \
	$(CONSTRAINTS_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--build-deps-for wheel --no-emit-index-url --no-emit-find-links \
		-c constraints.txt -o requirements-deploy.txt setup.cfg || \
	{ cp $(CONSTRAINTS_VENV)/constraints.txt $(CONSTRAINTS_VENV)/requirements-deploy.txt . && \
	  echo "make constraints failed: constraints.txt and requirements-deploy.txt put back" >&2; \
	  exit 1; }
	rm -rf $(CONSTRAINTS_VENV)

lint: $(STAMP)
	$(BIN)/ruff check .

## Codec micro-benchmarks; figures go to docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/codec_bench.py

## Locate in a tenant of 50,000 objects against a real kcm-core (about a minute);
## docs/benchmarks.md.
bench-locate: $(STAMP)
	$(BIN)/python benchmarks/locate_bench.py

## kcm-core's durable Create/Revoke against PyKMIP's server (a few minutes); docs/benchmarks.md.
bench-core: $(STAMP)
	$(BIN)/python benchmarks/core_bench.py

## The same with kcm-core's store on a PostgreSQL cluster it starts (Debian's binaries).
bench-core-pg: $(STAMP)
	$(BIN)/python benchmarks/core_bench.py --postgresql

## kcm-gateway's L4 operations against a bare Twisted TLS echo server, and a forwarded control
## operation against the core directly (about 2 minutes); docs/benchmarks.md.
bench-gateway: $(STAMP)
	$(BIN)/python benchmarks/gateway_bench.py

## kcm-gateway with workers = 1 and workers = 2 side by side under 8 clients, driven by a
## compiled load generator (built on first use with cc and OpenSSL's headers, Debian's
## libssl-dev) and by Python clients (about a minute); docs/benchmarks.md.
bench-workers: $(STAMP)
	$(BIN)/python benchmarks/workers_bench.py

## Another tenant's latency at kcm-core while one tenant runs heavy Locate batches, then
## 1 MiB requests of small items, batches of RSA-4096 signatures and batches of changes of an
## object with 1 MiB of attributes, against the idle core (about 3 minutes); docs/benchmarks.md.
bench-fairness: $(STAMP)
	$(BIN)/python benchmarks/fairness_bench.py

## Durable Create with 1, 2 and 3 kcm-cores on one PostgreSQL cluster it starts, and event
## delivery from commit to the last of three gateways (about 3 minutes); docs/benchmarks.md.
bench-cluster: $(STAMP)
	$(BIN)/python benchmarks/cluster_bench.py

## kcm.client's envelope: seal/open of 64 B and 4 KiB records with the data-key cache on one
## core, against PyKMIP's client encrypting each record at the gateway (about a minute);
## docs/benchmarks.md.
bench-sdk: $(STAMP)
	$(BIN)/python benchmarks/sdk_bench.py

## A long run of kcm-core (SQLite) and kcm-gateway (workers = 2) under a mixed load, with
## SIGHUPs, TLS file rewrites, service key rotations and worker kills, sampling what the
## processes and the database hold (28 minutes; MINUTES=N for another length);
## docs/benchmarks.md.
MINUTES ?= 28
bench-soak: $(STAMP)
	$(BIN)/python benchmarks/soak_bench.py --minutes $(MINUTES)

## kcm-core (KMIP 127.0.0.1:5696, gateway link 127.0.0.1:5697) and kcm-gateway (KMIP
## 127.0.0.1:5698), with a development PKI (var/pki), an embedded SQLite store
## (var/kcm-core.db), the L1 key file var/l1.key and a demo tenant with service "app"
## (`kcm dev run`, kcm/cli/dev_cmd.py). It refuses to start while an instance it recorded
## (var/*.pid) is alive or a port is taken. The core logs to var/kcm-core.log, the gateway
## to this terminal (text; RUN_ARGS=--log-format=json for JSON lines). Ctrl-C, or SIGTERM to
## make or to the launcher, stops both; so does either service exiting.
## Other ports: make run RUN_ARGS="--kmip-port 15696 --link-port 15697 --gateway-port 15698"
## Metrics and health checks (kcm-core's on 9696, kcm-gateway's on 9697):
## make run RUN_ARGS=--metrics-port=9696
run: $(STAMP) bytecode
	@exec $(BIN)/kcm dev run $(RUN_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info var .cache
	find kcm -name "*.so" -delete
	find kcm twisted tests benchmarks -name __pycache__ -prune -exec rm -rf {} +
