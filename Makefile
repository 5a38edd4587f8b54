# The two commands the README starts with: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make test` also runs pytest, minus the reliability marker, on every other CPython >= 3.11
# that .ci/pythons finds (on PATH, or under pyenv), each in its own .venv-3.N. Set
# OTHER_PYTHONS to a list of interpreters to test those instead, or to `none` to skip.
# --maxfail: an interpreter that breaks everything (each failure waits out a timeout) stops
# after ten failures, about three minutes, instead of holding CI for a quarter of an hour.
OTHER_PYTHONS ?= auto
OTHER_PYTEST_ARGS ?= -m "not reliability" --maxfail=10
# How many of those run at once (.ci/other-pythons); 1 runs them one after the other.
OTHER_PYTHONS_JOBS ?= 2

.PHONY: test lint typecheck pytest coverage reliability pythons other-python proto demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck coverage reliability pythons

lint: $(STAMP)
	$(VENV)/bin/ruff check workerkit tests examples proto benchmarks .ci/pythons
	$(VENV)/bin/ruff format --check workerkit tests examples proto benchmarks .ci/pythons

typecheck: $(STAMP)
	$(VENV)/bin/mypy workerkit
	$(VENV)/bin/mypy benchmarks

pytest: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# `make test` runs the whole suite in two parts. `coverage`: all but the reliability marker,
# under coverage, then the per-module table of workerkit/, failing under the floor in
# pyproject.toml. `reliability`: its fault and flood scenarios, untraced (they load the
# machine, and tracing would only slow them); pytest's status 5 (none collected) is fine
# there, for PYTEST_ARGS naming tests of the other part.
coverage: $(STAMP)
	rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest -q -m "not reliability" $(PYTEST_ARGS)
	$(PY) -m coverage report

reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Each interpreter .ci/pythons lists ("VERSION EXECUTABLE" lines) through `other-python`;
# all are run even if one fails, then a summary line says what was tested and how it went.
pythons: $(STAMP)
	@case '$(OTHER_PYTHONS)' in \
	  auto) found="$$($(PY) .ci/pythons $(PY))" ;; \
	  none) echo "pythons: OTHER_PYTHONS=none, no other interpreter tested"; exit 0 ;; \
	  *) found="$$($(PY) .ci/pythons $(PY) $(OTHER_PYTHONS))" ;; \
	esac || exit 1; \
	default=$$($(PY) -c 'import platform; print(platform.python_version())'); \
	if [ -z "$$found" ]; then \
	  echo "pythons: no CPython >= 3.11 other than the default $$default found"; exit 0; \
	fi; \
	echo "pythons: found" $$(printf '%s (%s)\n' $$found)'; each runs pytest $(OTHER_PYTEST_ARGS),' \
	  '$(OTHER_PYTHONS_JOBS) at a time; the default' $$default 'ran the full suite'; \
	bash .ci/other-pythons "$(MAKE)" $(OTHER_PYTHONS_JOBS) $$found

# One interpreter: `make other-python OTHER=EXECUTABLE V=3.N` tests it in .venv-3.N.
other-python: .venv-$(V)/.installed
	.venv-$(V)/bin/python -m pytest -q $(OTHER_PYTEST_ARGS) $(PYTEST_ARGS)

.venv-%/.installed: pyproject.toml
	test -x .venv-$*/bin/python || $(OTHER) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet --prefer-binary -e '.[dev]'
	touch $@

# Regenerate workerkit/_generated from proto/ (betterproto2 through grpcio-tools' protoc), and
# the field numbers and tags of the hand-written codec (workerkit/_wire/schema.py).
proto: $(STAMP)
	$(PY) proto/generate.py workerkit/_generated
	$(PY) proto/generate.py --schema workerkit/_wire/schema.py

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
	rm -rf $(VENV) .venv-3.* .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
