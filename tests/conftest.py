"""Shared fixtures: paths to the real corpora beside the repository, a small digits corpus."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from edge_conformer.data.corpora.digits import DIGIT_WORDS
from edge_conformer.data.tokenizer import Tokenizer, train_tokenizer
from edge_conformer.model.norms import MADNorm

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EC_SHARED_DATA", REPO.parent / "shared" / "data"))
FSDD_DIR = SHARED_DATA / "fsdd"
LIBRISPEECH_DIR = SHARED_DATA / "LibriSpeech"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# A digits corpus small enough to train a few steps in seconds (real FSDD audio).
SMALL_DIGITS = {
    "num_train": 48, "num_dev": 8, "num_test": 8, "num_unseen": 8,
    "min_digits": 2, "max_digits": 4,
    # No synthesised new_voices split (tests/test_new_voices.py builds its own): it would add
    # seconds to every preparation and a third test set to every tiny run and export.
    "num_new_voices": 0,
}


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    if not (FSDD_DIR / "recordings").is_dir():
        pytest.fail(f"{FSDD_DIR}: the FSDD corpus must lie beside the repository (../shared/data)")
    return FSDD_DIR


@pytest.fixture(scope="session")
def small_digits(fsdd_dir: Path, tmp_path_factory) -> dict[str, Path]:
    from edge_conformer.data.corpora.digits import prepare_digits

    out = tmp_path_factory.mktemp("digits")
    return prepare_digits(fsdd_dir, out, **SMALL_DIGITS)


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests of tiny tensors: a second thread only adds
    synchronisation, which on a busy machine made the chunk loop (hundreds of small ops) 30x
    slower. A module takes it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch  # here, not at the top: most test modules never need it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_digits_overrides(data_dir: Path) -> list[str]:
    """train.py overrides for a seconds-long run on the small digits corpus."""
    return [
        f"data.fsdd_dir={FSDD_DIR}",
        f"data.data_dir={data_dir}",
        *[f"data.prepare.{k}={v}" for k, v in SMALL_DIGITS.items()],
        "data.test_splits=[test,unseen_speaker]",
        "data.num_workers=0",
        "data.max_duration=20",
        # Few buckets: 48 short utterances in 10 buckets leave each bucket under one
        # max_duration batch, and the training sampler (drop_last) would then yield none.
        "data.num_buckets=2",
        "model.d_model=32",
        "model.num_heads=2",
        "model.num_layers=2",
        "model.conv_kernel_size=7",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]


# Enough steps for the tiny model to emit words (WER below 100%, not all blanks), so export parity
# compares real transcripts rather than empty ones: about 40 s on two cores. An offline model
# (the default xs streams): what the windowed package and the offline tools are tested on.
TINY_RUN_OVERRIDES = [
    "trainer.max_steps=300", "trainer.val_check_interval=100", "optim.schedule.warmup_steps=30",
    "optim.lr=5e-3", "model.streaming.enabled=false", "model.conv_context=symmetric",
    "data.features.normalize=utterance",
]


def train_tiny_digits(name: str, tmp_path_factory, *overrides: str) -> Path:
    """The run directory of a tiny model trained through train.py on the small digits corpus."""
    data_dir = tmp_path_factory.mktemp(f"{name}_data")
    run_dir = tmp_path_factory.mktemp(f"{name}_run")
    cmd = [sys.executable, str(REPO / "train.py"), *small_digits_overrides(data_dir),
           *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"training the tiny {name} model failed:\n{done.stderr[-3000:]}")
    return run_dir


@pytest.fixture(scope="session")
def trained_digits_run(fsdd_dir: Path, tmp_path_factory) -> Path:
    """The run directory of a tiny model trained through train.py on the small digits corpus,
    logged to W&B offline (so exports can update its run)."""
    return train_tiny_digits("trained_digits", tmp_path_factory, *TINY_RUN_OVERRIDES,
                             "logger=wandb")


# A tiny model trained to stream (dynamic chunks, chunk-limited convolutions, global feature
# statistics), for what needs a streamable checkpoint rather than a good one: 100 steps, about
# 20 s of CPU. Its transcripts are mostly empty; its logits are what streaming parity compares.
STREAMING_RUN_OVERRIDES = [
    "model.streaming.enabled=true", "model.conv_context=chunk", "data.features.normalize=global",
    "trainer.max_steps=100", "trainer.val_check_interval=100", "optim.schedule.warmup_steps=30",
    "optim.lr=5e-3", "logger=csv",
]


@pytest.fixture(scope="session")
def trained_streaming_run(fsdd_dir: Path, tmp_path_factory) -> Path:
    """The run directory of a tiny streaming-trained model (STREAMING_RUN_OVERRIDES)."""
    return train_tiny_digits("trained_streaming", tmp_path_factory, *STREAMING_RUN_OVERRIDES)


# Export settings for the tiny test model. Windows of 2 s (0.5 s overlap): the 1.3-3 s
# small-digits utterances then span one or two windows, so parity also runs through the
# stitching. min_identical 0.85: this barely trained model (WER ~90%) emits some tokens by a
# logit margin of ~1e-3, below FP16 rounding, so one transcript in a set of 8 may flip from
# export to export; 0.85 tolerates that one and no more. The tests assert what shows the
# numerics directly (no non-finite value, logits PSNR) on their own. The default, 0.99, is
# for trained models, whose decisions are not that close; test_parity.py checks the gate.
TEST_EXPORT = {"window_seconds": 2.0, "overlap_seconds": 0.5, "min_identical": 0.85}


def run_export(ckpt: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """export.py in a subprocess, with the test settings."""
    test_settings = [f"export.{key}={value}" for key, value in TEST_EXPORT.items()]
    cmd = [sys.executable, str(REPO / "export.py"), f"ckpt={ckpt}", f"out={out}",
           *test_settings, *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)


@pytest.fixture(scope="session")
def digits_export(trained_digits_run: Path, tmp_path_factory) -> tuple:
    """(the completed export.py process, its out dir) for the tiny digits run, default gate."""
    out = tmp_path_factory.mktemp("exports") / "digits-tiny"
    return run_export(trained_digits_run, out), out


def randomize_norms(model: torch.nn.Module) -> None:
    """Give every norm and BatchNorm non-identity parameters and running statistics, so a test
    comparing two graphs of the same weights cannot pass because those layers do nothing."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, MADNorm, nn.BatchNorm1d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(std=0.1)
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_(std=0.5)
                module.running_var.uniform_(0.5, 2.0)


@pytest.fixture(scope="session")
def digits_tokenizer(tmp_path_factory) -> Tokenizer:
    """(tests/test_beam.py, test_timestamps.py) SentencePiece unigram on digit strings, as
    the digits recipe's: the ten words are whole pieces, any other word is spelled "▁" and
    letters."""
    rng = random.Random(0)
    texts = [" ".join(rng.choices(DIGIT_WORDS, k=rng.randint(2, 8))) for _ in range(300)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "digits.model", 32)


def log_probs(tokenizer: Tokenizer, frames: list[dict[str, float]]) -> torch.Tensor:
    """CTC log-probabilities (frames, vocab + 1): each frame's pieces with their posteriors,
    the rest of its mass on the blank, a trace on every other class."""
    probs = torch.full((len(frames), tokenizer.vocab_size + 1), 1e-6)
    for t, frame in enumerate(frames):
        for piece, p in frame.items():
            probs[t, tokenizer.sp.piece_to_id(piece) + 1] = p
        probs[t, 0] = 1 - sum(frame.values())
    return (probs / probs.sum(-1, keepdim=True)).log()
