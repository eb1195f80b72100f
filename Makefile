# The two set-up commands (see README): `make serve` and `make test`.
# Both create .venv on first use and install the CPU build of torch first, so
# that pip never resolves the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: install system-deps test lint serve default-model

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# nginx, Prometheus and docker-compose from Debian (tests/deploy runs them).
system-deps:
	bash scripts/system-deps.sh

test: install system-deps
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

# Serves the bundled default model on 127.0.0.1:8000; settings come from
# INTROLLM_* environment variables (INTROLLM_HOST, INTROLLM_PORT, ...).
serve: install
	$(VENV)/bin/introllm-serve

# The bundled default model, trained from scratch on this machine (2 cores,
# about an hour). One core is enough and keeps timings steady.
DEFAULT_MODEL := checkpoints/introllm-countdown-tiny
TRAIN := OMP_NUM_THREADS=1 $(PY) -m training
default-model: install
	$(TRAIN) sft --out runs/default-sft --steps 2000 --batch-size 64 --lr 2e-3 --warmup-steps 100 \
		--eval-every 250 --eval-problems 200 --threads 1 --seed 0
	$(TRAIN) grpo --init runs/default-sft --out $(DEFAULT_MODEL) --steps 240 --prompts-per-step 32 \
		--group-size 8 --schedule lm:1,tau:1 --lm-lr 5e-5 --head-lr 1e-3 --eval-every 40 --eval-problems 200 \
		--save-every 40 --save-dtype bfloat16 --threads 1 --seed 0
	$(TRAIN) eval --checkpoint $(DEFAULT_MODEL) --problems 500 --samples 8 --threads 1
	$(TRAIN) card --checkpoint $(DEFAULT_MODEL) --command "make default-model"
