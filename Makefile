# Two commands matter: `make demo` and `make test`. Everything else supports them.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint protos bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench,parsl,dask]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fabric.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerate the private protobuf package from protos/ (the only source).
protos: $(STAMP)
	$(PY) -m fabric._proto.generate

bench: $(STAMP)
	$(PY) -m benchmarks noop

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
