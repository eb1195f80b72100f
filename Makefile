# The two set-up commands (see README): `make serve` and `make test`.
# Both create .venv on first use and install the CPU build of torch first, so
# that pip never resolves the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

comma := ,
empty :=
space := $(empty) $(empty)

.PHONY: install system-deps test lint serve default-model baselines draft-model draft-best-rung

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# nginx, Prometheus, docker-compose (tests/deploy runs them) and Chromium with chromedriver
# (the playground browser test) from Debian.
system-deps:
	bash scripts/system-deps.sh

# One pytest worker per CPU, each taking whole test files (module-scoped servers stay whole), and the tests
# that compile the engine's step together in one worker (tests/conftest.py: groups).
test: install system-deps
	$(PY) -m pytest -q -n auto --dist loadgroup

lint: install
	$(VENV)/bin/ruff check .

# Serves the bundled default model on 127.0.0.1:8000; settings come from
# INTROLLM_* environment variables (INTROLLM_HOST, INTROLLM_PORT, ...), or
# flags when run directly: `.venv/bin/introllm-serve --help` lists them.
serve: install
	$(VENV)/bin/introllm-serve

# The bundled default model, trained from scratch on this machine (2 cores,
# about 45 minutes). One core is enough and keeps timings steady; a seed fixes
# the weights (two runs gave the same digest). The warm start is a file
# target, so `make baselines` reuses it. Recipe: a 1000-step warm start, then
# both policies every step (lm+tau), the head on the mean + pass@k advantage;
# of the recipes measured (model card, "Recipe ablations") it gave the best LM
# and the learned point nearest its fixed-tau curve. An entropy bonus
# (--tau-entropy-coef) or a fresh persistent head prior (--reinit-head) did not
# make the head read the problem and put its point below the curve, and
# neither did the draft-reading head below (`make draft-model`), so the bundled
# head is still the paper's: a draft head would answer one-sample requests with
# the greedy draft. The draft-reading head that lands above the curve at 8
# samples ships beside it (`make draft-default-model`).
DEFAULT_MODEL := checkpoints/introllm-countdown-tiny
WARM_START := runs/default-sft
TRAIN := OMP_NUM_THREADS=1 $(PY) -m training
SFT_FLAGS := --steps 1000 --batch-size 64 --lr 2e-3 --warmup-steps 100 --eval-every 250 --eval-problems 200 \
	--threads 1 --seed 0
# Shared by the joint run and the fixed-tau baselines: same steps, prompts, group size and learning rate.
GRPO_FLAGS := --steps 240 --prompts-per-step 32 --group-size 8 --lm-lr 5e-5 --head-lr 1e-3 --eval-every 40 \
	--eval-problems 200 --save-every 40 --save-dtype bfloat16 --threads 1 --seed 0
JOINT_FLAGS := --schedule lm+tau:1 --tau-advantage mean+pass@k --pass-k 4
# The same joint recipe with a head that reads tau_{t-1} and the prompt's greedy draft (sample 0 of each
# group of 8), trained on its own rows and a temperature ladder's (positive advantage weights).
# `make draft-model DRAFT_NAME=draft-no-ladder LADDER_FLAGS=` is the same without the ladder.
LADDER_FLAGS ?= --tau-ladder 0.1,0.4,0.7,1.0 --ladder-weights positive
DRAFT_FLAGS := $(JOINT_FLAGS) --head-inputs hidden,tau_prev,draft --draft-lr-scale 100 $(LADDER_FLAGS)
EVAL_FLAGS := --problems 500 --samples 8 --threads 1
BASELINE_TAUS := 1.0 0.6

$(WARM_START)/introllm.json:
	$(TRAIN) sft --out $(WARM_START) $(SFT_FLAGS)

default-model: install $(WARM_START)/introllm.json
	rm -rf $(DEFAULT_MODEL)
	$(TRAIN) grpo --init $(WARM_START) --out $(DEFAULT_MODEL) $(GRPO_FLAGS) $(JOINT_FLAGS)
	$(TRAIN) eval --checkpoint $(DEFAULT_MODEL) $(EVAL_FLAGS)
	$(TRAIN) card --checkpoint $(DEFAULT_MODEL) --command "make default-model"

# The paper's comparison: GRPO at a fixed rollout temperature from the same
# warm start, each model over the decode-temperature grid, then the table and
# the frontier plot in the default model's card (about an hour more).
runs/grpo-fixed-%/eval/report.json: $(WARM_START)/introllm.json
	rm -rf runs/grpo-fixed-$*
	$(TRAIN) grpo --init $(WARM_START) --out runs/grpo-fixed-$* $(GRPO_FLAGS) --rollout-temperature fixed:$*
	$(TRAIN) eval --checkpoint runs/grpo-fixed-$* $(EVAL_FLAGS) --controllers \
		fixed:0.1,fixed:0.2,fixed:0.3,fixed:0.4,fixed:0.5,fixed:0.6,fixed:0.8,fixed:1.0,fixed:1.2,fixed:1.4,entropy

baselines: install $(foreach t,$(BASELINE_TAUS),runs/grpo-fixed-$(t)/eval/report.json)
	$(TRAIN) compare --out $(DEFAULT_MODEL)/eval/comparison --models \
		joint=$(DEFAULT_MODEL),$(subst $(space),$(comma),$(foreach t,$(BASELINE_TAUS),fixed-$(t)=runs/grpo-fixed-$(t)))
	$(TRAIN) card --checkpoint $(DEFAULT_MODEL) --command "make default-model && make baselines"

# The draft-reading head from the same warm start (about 50 minutes), evaluated like the bundled model; its
# log and reports are copied into the bundled model's card folder (eval/trials/$(DRAFT_NAME)), which lists it.
DRAFT_NAME ?= draft-ladder
DRAFT_MODEL := runs/$(DRAFT_NAME)
DRAFT_TRIAL := $(DEFAULT_MODEL)/eval/trials/$(DRAFT_NAME)
draft-model: install $(WARM_START)/introllm.json
	rm -rf $(DRAFT_MODEL) $(DRAFT_TRIAL)
	$(TRAIN) grpo --init $(WARM_START) --out $(DRAFT_MODEL) $(GRPO_FLAGS) $(DRAFT_FLAGS)
	$(TRAIN) eval --checkpoint $(DRAFT_MODEL) $(EVAL_FLAGS)
	mkdir -p $(DRAFT_TRIAL)
	cp -r $(DRAFT_MODEL)/grpo_log.jsonl $(DRAFT_MODEL)/introllm.json $(DRAFT_MODEL)/eval $(DRAFT_TRIAL)/
	$(TRAIN) card --checkpoint $(DEFAULT_MODEL) --command "make default-model && make baselines"

# Issue 20's option 2(b): the same draft head, its head phase trained off-policy from a two-rung ladder (4 rows
# at 0.2, 4 at 1.0 per problem, head steps only) towards the rung that scores better on each problem (mean +
# pass@4 per rung), the LM frozen in that phase (training/grpo.py, `--tau-objective best-rung`).
BEST_RUNG_FLAGS := --tau-ladder 0.2,1.0 --ladder-samples 8 --tau-objective best-rung
draft-best-rung:
	$(MAKE) draft-model DRAFT_NAME=draft-best-rung LADDER_FLAGS="$(BEST_RUNG_FLAGS)"

# Issue 20: a draft-reading head trained head-only on the bundled model's LM, frozen (schedule tau:1, a new run
# on top of its joint run: --resume false), off-policy from a 0.1/1.0 ladder (4 rows at each rung a problem) by
# the rungs' value, the head's tau range being the two rungs (training/grpo.py, `--tau-objective rung-value`).
# About 12 minutes of training and 7 of evaluation on one thread. RUNG_VALUE_SCORE=mean scores a rung by its
# mean reward alone (a colder head) instead of mean + pass@4; RUNG_MEAN_WEIGHT=w scores it w x mean + pass@4
# (the trials rung-value-mean2 and -mean3).
RUNG_VALUE_NAME ?= draft-rung-value
RUNG_VALUE_SCORE ?= mean+pass@k
RUNG_MEAN_WEIGHT ?= 1.0
# RUNG_VALUE_LADDER=0.1,0.5,1.0 RUNG_VALUE_LADDER_SAMPLES=12 adds a middle rung (4 rows at each of three).
# RUNG_PASS_WITH_DRAFT=true counts the problem's greedy draft among each rung's samples in its pass@k, as
# evaluation does (the draft is sample 0): a problem whose draft is right gains nothing from hot rows.
RUNG_PASS_WITH_DRAFT ?= false
RUNG_VALUE_LADDER ?= 0.1,1.0
RUNG_VALUE_LADDER_SAMPLES ?= 8
RUNG_VALUE_MODEL := runs/$(RUNG_VALUE_NAME)
RUNG_VALUE_TRIAL := $(DEFAULT_MODEL)/eval/trials/$(RUNG_VALUE_NAME)
RUNG_VALUE_FLAGS := --resume false --schedule tau:1 --steps 120 --prompts-per-step 32 --group-size 4 \
	--tau-ladder $(RUNG_VALUE_LADDER) --ladder-samples $(RUNG_VALUE_LADDER_SAMPLES) --tau-objective rung-value --tau-advantage $(RUNG_VALUE_SCORE) \
	--rung-mean-weight $(RUNG_MEAN_WEIGHT) --rung-pass-with-draft $(RUNG_PASS_WITH_DRAFT) \
	--pass-k 4 --head-lr 1e-3 --draft-lr-scale 100 --head-inputs hidden,tau_prev,draft --head-tau-min 0.1 \
	--head-tau-max 1.0 --head-tau-init 0.55 --eval-every 40 --eval-problems 200 --save-every 40 \
	--save-dtype bfloat16 --threads 1 --seed 0
# The second bundled checkpoint (README, "Two bundled checkpoints"): the bundled model's LM, unchanged, with the
# draft-reading head of the trial rung-value-draft-pass-mean2 (the draft counted in each rung's pass@k, each rung
# scored 2 x mean + pass@4). About 6 minutes of training and 25 of evaluation (four rounds) on one thread; the
# seed fixes the head's weights (the trial's run and this one gave the same digest).
DRAFT_DEFAULT_MODEL := checkpoints/introllm-countdown-tiny-draft
.PHONY: draft-default-model
draft-default-model: install
	$(MAKE) --no-print-directory draft-default-model-run RUNG_PASS_WITH_DRAFT=true RUNG_MEAN_WEIGHT=2
.PHONY: draft-default-model-run
draft-default-model-run:
	rm -rf $(DRAFT_DEFAULT_MODEL)
	$(TRAIN) grpo --init $(DEFAULT_MODEL) --out $(DRAFT_DEFAULT_MODEL) $(RUNG_VALUE_FLAGS)
	$(TRAIN) eval --checkpoint $(DRAFT_DEFAULT_MODEL) $(EVAL_FLAGS) --repeats 4
	$(TRAIN) card --checkpoint $(DRAFT_DEFAULT_MODEL) --command "make draft-default-model"

.PHONY: draft-rung-value
draft-rung-value: install
	rm -rf $(RUNG_VALUE_MODEL) $(RUNG_VALUE_TRIAL)
	$(TRAIN) grpo --init $(DEFAULT_MODEL) --out $(RUNG_VALUE_MODEL) $(RUNG_VALUE_FLAGS)
	$(TRAIN) eval --checkpoint $(RUNG_VALUE_MODEL) $(EVAL_FLAGS)
	mkdir -p $(RUNG_VALUE_TRIAL)
	cp -r $(RUNG_VALUE_MODEL)/grpo_log.jsonl $(RUNG_VALUE_MODEL)/introllm.json $(RUNG_VALUE_MODEL)/eval $(RUNG_VALUE_TRIAL)/
	$(TRAIN) card --checkpoint $(DEFAULT_MODEL) --command "make default-model && make baselines"
