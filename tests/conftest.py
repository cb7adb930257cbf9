"""Shared fixtures: paths to the real corpora beside the repository, a small digits corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def small_digits_overrides(data_dir: Path) -> list[str]:
    """train.py overrides for a seconds-long run on the small digits corpus."""
    return [
        f"data.fsdd_dir={FSDD_DIR}",
        f"data.data_dir={data_dir}",
        *[f"data.prepare.{k}={v}" for k, v in SMALL_DIGITS.items()],
        "data.num_workers=0",
        "data.max_duration=20",
        "model.d_model=32",
        "model.num_heads=2",
        "model.num_layers=2",
        "model.conv_kernel_size=7",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]
