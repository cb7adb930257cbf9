# make demo : set up .venv, prepare the digits corpus, train the streaming model, evaluate it
#             at full context and streaming, build the beam search's lexicon and LM
#             (data/digits/lm/), export model.mlpackage + stream.mlpackage and print the
#             parity tables (docs/streaming.md).
# make demo-offline : the offline recipe (per-utterance normalisation, symmetric
#             convolutions): no stream.mlpackage, its own run and export directories.
# make test : set up .venv, run the whole test suite (slow end-to-end tests included).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FSDD_DIR ?= $(abspath ../shared/data/fsdd)
export FSDD_DIR
export WANDB_MODE ?= offline

.PHONY: setup demo demo-offline test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The default run's directory: train.py names it after the data and model variant.
DEMO_RUN := outputs/digits-xs-depthwise-l2
DEMO_EXPORT := exports/digits-xs

DEMO_LEXICON := data/digits/lm/lexicon.txt

# The lexicon and LM first: the export's parity report gives beam + lexicon WERs beside the
# gate's greedy ones.
demo: setup
	$(PY) train.py $(DEMO_ARGS)
	$(PY) tools/build_lm.py --model $(DEMO_RUN) --transcripts data/digits/cuts_train.jsonl.gz
	$(PY) export.py ckpt=$(DEMO_RUN) out=$(DEMO_EXPORT) decode.beam_size=8 decode.lexicon=$(DEMO_LEXICON)

# The offline recipe: per-utterance feature statistics (which cannot stream), convolutions
# that see both sides, no chunk masks, no equaliser, and the 1200 steps it was measured at
# (recipes/digits/README.md, "Time to accuracy").
OFFLINE_ARGS := model.streaming.enabled=false model.conv_context=symmetric \
	data.features.normalize=utterance data.augment.eq.prob=0 trainer.max_steps=1200
OFFLINE_RUN := outputs/digits-xs-offline

demo-offline: setup
	$(PY) train.py $(OFFLINE_ARGS) hydra.run.dir=$(OFFLINE_RUN) $(DEMO_ARGS)
	$(PY) export.py ckpt=$(OFFLINE_RUN) out=$(DEMO_EXPORT)-offline

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf outputs multirun data .pytest_cache
