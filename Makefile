# The two commands: `make run` and `make test`. Everything else is a step of theirs.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup run test check lint unit bench clean

setup:
	@bash tools/setup.sh

IMAGE := build/hello.raw

run: setup
	$(VENV)/bin/imagekit config render examples/hello --pretty
	$(VENV)/bin/imagekit build examples/hello -o $(IMAGE) --force
	$(VENV)/bin/vmtest run $(IMAGE) --console

test: setup
	$(PYTEST) tests

check: setup lint unit

lint:
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

unit: setup
	$(PYTEST) tests/unit

bench: setup
	$(PY) -m bench

clean:
	rm -rf build $(VENV) .mypy_cache .ruff_cache .pytest_cache
