# Every target brings its own prerequisites (venv, pinned install, data), so on a fresh machine
# `make replicate-ptb-char SCALE=quick` and `make test` are the only commands needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= paper
SEEDS ?= 0
# Extra Hydra overrides for every row of a replicate target, e.g. OVERRIDES="trainer.threads=1 device=cuda".
OVERRIDES ?=
# Only these rows of the table (their names in experiments/<table>.yaml), e.g. ROWS="unregularized zoneout".
ROWS ?=
# How a replicate target runs its rows: sequential | joblib (Hydra joblib launcher, rows in parallel) | slurm
# (one Slurm job per row and seed; installs the optional [slurm] extra first; see the README's "On a cluster").
LAUNCHER ?= sequential
# FORCE=1: train rows whose finished runs are only kept in results/<scale>/runs (the main job trains, whatever is
# committed); a finished run folder in runs/ is still skipped (trainer.resume).
FORCE ?=
# The shared data folder beside this checkout is used as a local mirror when it exists.
SHARED_DATA := $(abspath $(wildcard ../shared/data))
export ZONEOUT_DATA_MIRROR ?= $(SHARED_DATA)
export ZONEOUT_DATA_DIR ?= $(CURDIR)/data
# make target -> experiments/<file>.yaml
TABLE_ptb-char := table1_ptb_char
TABLE_ptb-word := table1_ptb_word
TABLE_text8 := table1_text8
TABLE_pmnist := table2_pmnist
TABLE_fig3 := fig3_zoneout_grid
TABLE_gru-rnn := text_gru_rnn
TABLES := ptb-char ptb-word text8 pmnist fig3 gru-rnn

.PHONY: lint evidence paper-trajectory paper-status help install install-slurm slurm-vs-sequential data data-text8 test test-fast smoke bench \
	replicate-gradient-flow replicate-semantic-consistency replicate-seq2seq-addition $(addprefix replicate-,$(TABLES)) clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 24

install: $(VENV)/.installed  ## venv + pinned requirements + editable install

$(VENV)/.installed: requirements.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

install-slurm: $(VENV)/.installed-slurm  ## the optional Slurm launcher: pip install -e .[slurm] (LAUNCHER=slurm does it itself)

$(VENV)/.installed-slurm: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[slurm]'
	@touch $@

data: install  ## fetch + verify PTB (word, char) and MNIST (mirror: ../shared/data when present)
	$(BIN)/python scripts/fetch_data.py

test: data  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

lint: install  ## ruff check (settings in pyproject.toml; CI runs it before the tests)
	$(BIN)/ruff check .

test-fast: data  ## tests without the slow end-to-end ones
	$(BIN)/python -m pytest -q -m "not slow"

paper-trajectory: install  ## char-PTB at paper scale: our valid BPC per epoch beside the authors' log (results/paper/)
	$(BIN)/python scripts/paper_trajectory.py --keep

paper-status: install  ## where each paper-scale char-PTB run stands (epochs, resume point, running?) and the command that continues it
	$(BIN)/python scripts/paper_status.py

smoke: data  ## a char-PTB zoneout run of a few hundred CPU steps that prints BPC
	$(BIN)/python -m zoneout.train experiment=ptb_char/zoneout logger=csv model.hidden_size=100 dataset.train_fraction=0.2 \
		trainer.max_epochs=1 trainer.max_steps_per_epoch=300 trainer.eval_max_batches=10 trainer.eval_stream=false \
		name=smoke/ptb_char_zoneout

data-text8: install  ## download text8 (not in the mirror; needs mattmahoney.net)
	$(BIN)/python scripts/fetch_data.py --dataset text8

evidence: data  ## the main job: char-PTB at SCALE=small, unregularized vs zoneout, 3 seeds, 2 rows at a time -> results/small/
	$(MAKE) replicate-ptb-char SCALE=small SEEDS="0 1 2" ROWS="unregularized zoneout" LAUNCHER=joblib FORCE=1 \
		OVERRIDES="trainer.threads=1 trainer.progress=false $(OVERRIDES)"

replicate-ptb-char: data  ## Table 1 char-PTB rows (SCALE=quick|paper, SEEDS="0 1 2", OVERRIDES="k=v ..."), then the table
replicate-ptb-word: data  ## Table 1 word-PTB rows (Zaremba large +/- zoneout), then the table
replicate-text8: data-text8  ## Table 1 text8 rows, then the table
replicate-pmnist: data  ## Table 2 permuted-MNIST rows, then the table
replicate-fig3: data  ## Figure 3 (left): the zoneout probability grid on char-PTB
replicate-gru-rnn: data  ## GRU and tanh-RNN with/without zoneout on char-PTB (numbers in the paper's text)
$(addprefix replicate-,$(TABLES)): replicate-%: $(if $(filter slurm,$(LAUNCHER)),install-slurm)
	$(BIN)/python scripts/replicate.py $(TABLE_$*) $(OVERRIDES) --scale $(SCALE) --seeds $(SEEDS) --launcher $(LAUNCHER) \
		$(if $(strip $(ROWS)),--rows $(ROWS)) $(if $(strip $(FORCE)),--force)

replicate-gradient-flow: data  ## Figure 6: per-timestep gradient norms after one pMNIST epoch (SEEDS="0 1 2") -> results/<scale>/gradient_flow.{png,md,json}
	$(BIN)/python scripts/gradient_flow.py --scale $(SCALE) --seeds $(SEEDS)

# The toys run seeds 0 1 2 unless SEEDS is given on the command line or in the environment.
TOY_SEEDS = $(if $(filter file,$(origin SEEDS)),0 1 2,$(SEEDS))

replicate-semantic-consistency: install  ## original repo's toy: h <- hW, zoneout 0.1 vs none (SCALE=paper|quick, ~5 CPU min) -> results/<scale>/toy_semantic_consistency.{md,json,png}
	$(BIN)/python -m zoneout.toys.semantic_consistency --scale $(SCALE) --seeds $(TOY_SEEDS)

replicate-seq2seq-addition: install  ## original repo's toy: seq2seq LSTM addition with a curriculum, z_c 0.05 vs none -> results/<scale>/toy_seq2seq_addition.{md,json,png}
	$(BIN)/python -m zoneout.toys.seq2seq_addition --scale $(SCALE) --seeds $(TOY_SEEDS)

slurm-vs-sequential: data install-slurm  ## wall time of the 2-seed quick char-PTB table: sequential vs a local Slurm -> results/quick/slurm_vs_sequential.md
	scripts/slurm_vs_sequential.sh

bench: install  ## CPU: fused LSTM/GRU/RNN vs nn.LSTM/GRU/RNN + recurrent-BN rows, 1 and 2 threads -> results/bench_cpu_<vendor>.md (CUDA: scripts/bench.py --device cuda)
	$(BIN)/python scripts/bench_cpu.py $(if $(strip $(THREADS)),--threads $(THREADS))

clean:  ## remove runs and caches (keeps data and the venv)
	rm -rf runs outputs multirun .pytest_cache
