"""The export directory: what `export.py` writes and what an app (or transcribe.py) reads.

    model.mlpackage   FP16 Core ML ML Program for one fixed window (CPU and Neural Engine)
    tokenizer.model   SentencePiece model; token id i is logit i + 1, logit 0 is the CTC blank
    frontend.json     feature settings, window/overlap, shapes, vocabulary: all the host needs
    parity.json       the parity gate's numbers (see parity.py), parity.md the same for humans

`load_bundle` reads a directory back into the host-side pieces; `executor_logits` (any OS) and
`coreml_logits` (macOS) run its package on an utterance window by window. The export's own
parity check reads its directory through these same functions, so what it proves holds for
any user of the directory.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.mil.package import import_coremltools
from edge_conformer.runtime.checkpoint import TOKENIZER_FILE
from edge_conformer.runtime.windowing import (
    SUBSAMPLING,
    LogitsFn,
    WindowSpec,
    package_window_runner,
    windowed_logits,
)

PACKAGE_DIR = "model.mlpackage"
FRONTEND_FILE = "frontend.json"
PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"
BLANK_INDEX = 0
COREML_AVAILABLE = sys.platform == "darwin"  # the Core ML runtime exists only on Apple OSes
COREML_UNAVAILABLE_NOTE = "not available on Linux (the Core ML runtime needs macOS)"


def feature_settings(configured: dict) -> dict:
    """Every LogMelFeatures argument, configured or default: the host must not guess any."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(LogMelFeatures).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **configured}


def frontend_description(features: dict, window: WindowSpec, vocab_size: int) -> dict:
    """The content of frontend.json for a package of `window` over `features` settings."""
    n_mels = features["n_mels"]
    return {
        "features": features,
        "feature_normalization": "per mel bin, mean and standard deviation over the utterance",
        "window": {
            **window.describe(frames_per_second=1000.0 / features["hop_length_ms"]),
            "subsampling": SUBSAMPLING,
            "stitching": "keep each window's frames up to the midpoint of its overlaps",
        },
        "inputs": {
            "features": [1, n_mels, 1, window.window_frames],
            "feature_mask": [1, 1, 1, window.window_frames],
        },
        "outputs": {"logits": [1, vocab_size + 1, 1, window.window_output_frames]},
        "vocab_size": vocab_size,
        "blank_index": BLANK_INDEX,
        "token_offset": 1,  # logit i + 1 is SentencePiece id i
        "tokenizer": TOKENIZER_FILE,
        "package": PACKAGE_DIR,
    }


def write_frontend(directory: Path, description: dict) -> Path:
    path = Path(directory) / FRONTEND_FILE
    path.write_text(json.dumps(description, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class Bundle:
    """An export directory read back: the host-side front end and the package path."""

    directory: Path
    features: LogMelFeatures
    window: WindowSpec
    tokenizer: Tokenizer

    @property
    def package(self) -> Path:
        return self.directory / PACKAGE_DIR


def load_bundle(directory: str | Path) -> Bundle:
    directory = Path(directory)
    frontend_file = directory / FRONTEND_FILE
    if not frontend_file.is_file():
        raise FileNotFoundError(f"{directory}: not an export directory (no {FRONTEND_FILE})")
    frontend = json.loads(frontend_file.read_text())
    window = frontend["window"]
    return Bundle(
        directory=directory,
        features=LogMelFeatures(**frontend["features"]),
        window=WindowSpec(window["frames"], window["overlap_frames"]),
        tokenizer=Tokenizer(directory / frontend["tokenizer"]),
    )


def executor_logits(bundle: Bundle, executor: PackageExecutor) -> LogitsFn:
    """Utterance logits from the package run by the FP16 executor (any OS)."""
    run_window = package_window_runner(lambda inputs: executor(**inputs))
    return lambda features: windowed_logits(features, run_window, bundle.window)


def coreml_logits(bundle: Bundle) -> LogitsFn:
    """Utterance logits from the package run by the Core ML runtime (macOS only)."""
    if not COREML_AVAILABLE:
        raise RuntimeError(f"the Core ML runtime is {COREML_UNAVAILABLE_NOTE}")
    ct = import_coremltools()
    mlmodel = ct.models.MLModel(str(bundle.package), compute_units=ct.ComputeUnit.CPU_AND_NE)
    run_window = package_window_runner(mlmodel.predict)
    return lambda features: windowed_logits(features, run_window, bundle.window)
