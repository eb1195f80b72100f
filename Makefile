# The two set-up commands (see README): `make serve` and `make test`.
# Both create .venv on first use and install the CPU build of torch first, so
# that pip never resolves the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: install test lint serve

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

serve: install
	@echo "The HTTP service arrives with the service issue (#4); nothing to serve yet." >&2
	@exit 2
