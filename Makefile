# The two commands the README starts with: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest proto demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check workerkit tests examples proto benchmarks
	$(VENV)/bin/ruff format --check workerkit tests examples proto benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy workerkit
	$(VENV)/bin/mypy benchmarks

pytest: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Regenerate workerkit/_generated from proto/ (betterproto2 through grpcio-tools' protoc).
proto: $(STAMP)
	$(PY) proto/generate.py workerkit/_generated

# The template worker under `workerkit host` (Ctrl-C to stop). Its worker.config.json says
# python3; the host's own override points it at .venv's interpreter. DEMO_ARGS=--port 0
# if 7071 is taken.
demo: $(STAMP)
	@echo "Try:  curl 'http://127.0.0.1:7071/api/hello?name=Ada'"
	@echo "      curl -X POST -d Ada http://127.0.0.1:7071/api/greet/fr"
	@echo "      curl -d '{\"input\": \"{\\\"id\\\": 7, \\\"items\\\": [{\\\"price\\\": 2.5}]}\"}' http://127.0.0.1:7071/admin/functions/orders"
	languageWorkers__pyworker__defaultExecutablePath=$(abspath $(PY)) \
		$(PY) -m workerkit host examples/python/app --worker examples/python $(DEMO_ARGS)

# Not part of `make test`. The official-worker baseline needs a prepared checkout:
# WORKERKIT_OFFICIAL_WORKER=DIR (see benchmarks/README.md); BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
