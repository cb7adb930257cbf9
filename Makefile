# make demo : set up .venv, prepare the digits corpus, train, evaluate, export, and build the
#             beam search's lexicon and LM (data/digits/lm/).
# make demo-stream : the same, trained to stream (docs/streaming.md): also exports
#             stream.mlpackage and prints its parity table (full context, streaming, FP16).
# make test : set up .venv, run the whole test suite (slow end-to-end tests included).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FSDD_DIR ?= $(abspath ../shared/data/fsdd)
export FSDD_DIR
export WANDB_MODE ?= offline

.PHONY: setup demo demo-stream test lint bench clean

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

# The streaming recipe: dynamic chunk masks in training, chunk-bounded convolutions, global
# feature statistics (per-utterance ones cannot stream) and the random equaliser that makes up
# for them on the unseen speaker (conf/data/digits.yaml), in a run directory of its own.
STREAM_ARGS := model.streaming.enabled=true model.conv_context=chunk \
	data.features.normalize=global data.augment.eq.prob=0.5
STREAM_RUN := outputs/digits-xs-stream

demo-stream: setup
	$(PY) train.py $(STREAM_ARGS) hydra.run.dir=$(STREAM_RUN) $(DEMO_ARGS)
	$(PY) export.py ckpt=$(STREAM_RUN) out=$(DEMO_EXPORT)-stream

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf outputs multirun data .pytest_cache
