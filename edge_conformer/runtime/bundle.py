"""The export directory: what `export.py` writes and what an app (or transcribe.py) reads.

    model.mlpackage   FP16 Core ML ML Program for one fixed window (CPU and Neural Engine)
    stream.mlpackage  the same model, one fixed chunk per call with explicit caches (when the
                      model streams: frontend.json's `streaming` section, stream_package.py)
    tokenizer.model   SentencePiece model; token id i is logit i + 1, logit 0 is the CTC blank
    frontend.json     feature settings, window/overlap, shapes, vocabulary: all the host needs
    parity.json       the parity gate's numbers (see parity.py), parity.md the same for humans
    .edge-conformer-export   marks a directory an export wrote (see export/publish.py)

`load_bundle` reads a directory back into the host-side pieces; `executor_logits` (any OS) and
`coreml_logits` (macOS) run its package on an utterance window by window. The export's own
parity check reads its directory through these same functions, so what it proves holds for
any user of the directory.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from edge_conformer.data.features import STD_GUARD, LogMelFeatures
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.errors import UserInputError, one_line, read_json
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.mil.package import import_coremltools
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR
from edge_conformer.runtime.checkpoint import TOKENIZER_FILE
from edge_conformer.runtime.windowing import (
    BatchLogitsFn,
    LogitsFn,
    PackagePredict,
    WindowSpec,
    package_window_runner,
    package_windows_runner,
    windowed_logits,
    windowed_logits_of,
)

PACKAGE_DIR = "model.mlpackage"
FRONTEND_FILE = "frontend.json"
PARITY_MD = "parity.md"
BLANK_INDEX = 0
COREML_AVAILABLE = sys.platform == "darwin"  # the Core ML runtime exists only on Apple OSes
COREML_UNAVAILABLE_NOTE = "not available on Linux (the Core ML runtime needs macOS)"


# How each data.features.normalize treats a log-mel, for the reader of frontend.json.
FEATURE_NORMALIZATION = {
    "utterance": "per mel bin, mean and standard deviation over the utterance",
    "global": f"per mel bin: (log_mel - feature_stats.mean) / (feature_stats.std + {STD_GUARD})",
    "running": "per mel bin, frame t: (log_mel - m_t) / (s_t + "
               f"{STD_GUARD}), m_t and s_t the mean and std of frames 0..t with feature_stats "
               "counted as running_prior_frames frames more (causal; a new utterance starts "
               "afresh)",
    "none": "none: raw log-mels",
}


def frontend_description(features: LogMelFeatures, window: WindowSpec, vocab_size: int) -> dict:
    """The content of frontend.json for a package of `window` over the `features` front end:
    every setting written out, defaults included (the host must not guess any), and the
    global statistics when it normalises by them."""
    settings, stats = features.settings, features.stats
    n_mels = settings.n_mels
    return {
        "features": asdict(settings),
        "feature_normalization": FEATURE_NORMALIZATION[settings.normalize],
        "feature_stats": asdict(stats) if stats else None,
        "window": {
            **window.describe(settings.frames_per_second),
            "subsampling": SUBSAMPLING_FACTOR,
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
    # frontend.json's streaming section (runtime/stream_package.py: stream_description), whose
    # "package" names the streaming package; None when the export has none.
    streaming: dict | None = None

    @property
    def package(self) -> Path:
        return self.directory / PACKAGE_DIR


def load_bundle(directory: str | Path) -> Bundle:
    """An export directory read back; UserInputError naming the file if it is not one."""
    directory = Path(directory)
    frontend_file = directory / FRONTEND_FILE
    if not frontend_file.is_file():
        raise UserInputError(f"{directory}: not an export directory (no {FRONTEND_FILE})")
    frontend = read_json(frontend_file, "export front end")
    try:
        window = frontend["window"]
        features = LogMelFeatures.from_saved(frontend["features"], frontend.get("feature_stats"))
        spec = WindowSpec(window["frames"], window["overlap_frames"])
        tokenizer_file = directory / frontend["tokenizer"]
    except (KeyError, TypeError, ValueError) as error:
        reason = one_line(error)
        raise UserInputError(f"{frontend_file}: not an export front end ({reason})") from error
    return Bundle(directory, features, spec, _read_tokenizer(tokenizer_file),
                  streaming=frontend.get("streaming"))


def _read_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer(path)
    except (OSError, RuntimeError) as error:  # missing, or not a SentencePiece model
        raise UserInputError(f"{path}: unreadable tokenizer ({one_line(error)})") from error


def package_executor(bundle: Bundle, mode: str, package: Path | None = None) -> PackageExecutor:
    """The FP16 executor of the bundle's package (or of its `package`, e.g. the streaming
    one); UserInputError naming it if unreadable."""
    package = package or bundle.package
    try:
        return PackageExecutor(package, mode=mode)
    except (OSError, ValueError, DecodeError) as error:  # missing, or not an ML Program
        reason = one_line(error)
        raise UserInputError(f"{package}: unreadable Core ML package ({reason})") from error


def executor_logits(bundle: Bundle, executor: PackageExecutor) -> LogitsFn:
    """Utterance logits from the package run by the FP16 executor (any OS)."""
    logits_of = executor_batch_logits(bundle, executor)
    return lambda features: logits_of([features])[0]


def executor_batch_logits(bundle: Bundle, executor: PackageExecutor) -> BatchLogitsFn:
    """`executor_logits` of several utterances, all their windows in one batched call (the
    same logits, the executor's cost per op shared among them)."""
    run_windows = package_windows_runner(lambda inputs: executor(**inputs))
    return lambda utterances: windowed_logits_of(utterances, run_windows, bundle.window)


def coreml_logits(bundle: Bundle) -> LogitsFn:
    """Utterance logits from the package run by the Core ML runtime (macOS only)."""
    run_window = package_window_runner(coreml_predict(bundle.package))
    return lambda features: windowed_logits(features, run_window, bundle.window)


def coreml_predict(package: Path) -> PackagePredict:
    """A saved package's predict function in the Core ML runtime (macOS only), on the
    Neural Engine where it can."""
    if not COREML_AVAILABLE:
        raise RuntimeError(f"the Core ML runtime is {COREML_UNAVAILABLE_NOTE}")
    ct = import_coremltools()
    return ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_AND_NE).predict
