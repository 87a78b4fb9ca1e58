# Every target brings its own prerequisites (venv, pinned install, data), so on a fresh machine
# `make replicate-ptb-char SCALE=quick` and `make test` are the only commands needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= paper
SEEDS ?= 0
# The shared data folder beside this checkout is used as a local mirror when it exists.
SHARED_DATA := $(abspath $(wildcard ../shared/data))
export ZONEOUT_DATA_MIRROR ?= $(SHARED_DATA)
export ZONEOUT_DATA_DIR ?= $(CURDIR)/data
TABLES := ptb-char

.PHONY: help install data test test-fast smoke bench $(addprefix replicate-,$(TABLES)) clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 24

install: $(VENV)/.installed  ## venv + pinned requirements + editable install

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

data: install  ## fetch + verify PTB (word, char) and MNIST (mirror: ../shared/data when present)
	$(BIN)/python scripts/fetch_data.py

test: data  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: data  ## tests without the slow end-to-end ones
	$(BIN)/python -m pytest -q -m "not slow"

smoke: data  ## a char-PTB zoneout run of a few hundred CPU steps that prints BPC
	$(BIN)/python -m zoneout.train experiment=ptb_char/zoneout logger=csv scale=quick model.hidden_size=128 \
		trainer.max_epochs=1 trainer.max_steps_per_epoch=300 trainer.eval_max_batches=10 trainer.eval_stream=false \
		name=smoke/ptb_char_zoneout

replicate-ptb-char: data  ## Table 1 char-PTB rows (SCALE=quick|paper, SEEDS="0 1 2"), then the table
	$(BIN)/python scripts/replicate.py table1_ptb_char --scale $(SCALE) --seeds $(SEEDS)

bench: install  ## fused vs reference vs nn.LSTM training-step benchmark -> results/bench_<device>.md
	$(BIN)/python scripts/bench.py

clean:  ## remove runs and caches (keeps data and the venv)
	rm -rf runs outputs multirun .pytest_cache
