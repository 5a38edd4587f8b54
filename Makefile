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
	$(VENV)/bin/ruff check workerkit tests examples proto
	$(VENV)/bin/ruff format --check workerkit tests examples proto

typecheck: $(STAMP)
	$(VENV)/bin/mypy workerkit

pytest: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Regenerate workerkit/_generated from proto/ (betterproto2 through grpcio-tools' protoc).
proto: $(STAMP)
	$(PY) proto/generate.py workerkit/_generated

demo: $(STAMP)
	$(PY) examples/templates/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
