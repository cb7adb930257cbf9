"""Transcribe audio files with a checkpoint (PyTorch FP32) or an export directory (its package).

Any sample rate and channel count soundfile reads: audio is down-mixed and resampled to the
model's rate, then featurised and decoded exactly as in parity checking (greedy CTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_conformer.data.audio import read_audio
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode import decode_logits
from edge_conformer.runtime.bundle import (
    COREML_AVAILABLE,
    FRONTEND_FILE,
    coreml_logits,
    executor_logits,
    load_bundle,
    package_executor,
)
from edge_conformer.runtime.checkpoint import LoadedCheckpoint
from edge_conformer.runtime.windowing import (
    LogitsFn,
    WindowSpec,
    torch_window_runner,
    whole_utterance_logits,
    windowed_logits,
)

RUNTIMES = ("auto", "coreml", "executor")


@dataclass(frozen=True)
class Transcriber:
    features: LogMelFeatures
    tokenizer: Tokenizer
    logits: LogitsFn
    description: str  # what runs: which model, graph, precision and windowing

    def __call__(self, audio_path: str | Path) -> str:
        """The transcript of one file; BadAudioError (naming the file) if it is unusable."""
        waveform = read_audio(audio_path, self.features.sample_rate)
        return decode_logits(self.logits(self.features(waveform)), self.tokenizer)


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / FRONTEND_FILE).is_file()


def checkpoint_transcriber(loaded: LoadedCheckpoint, window: WindowSpec | None) -> Transcriber:
    """The FP32 training graph: whole utterances, or windowed as the package would see them."""
    model = loaded.model
    if window is None:
        logits = lambda features: whole_utterance_logits(model, features)
        how = "whole utterances"
    else:
        run_window = torch_window_runner(model)
        logits = lambda features: windowed_logits(features, run_window, window)
        how = f"windows of {window.window_frames} frames, {window.overlap_frames} overlapping"
    return Transcriber(
        loaded.features, loaded.tokenizer, logits,
        description=f"{loaded.path}: PyTorch FP32 training graph, {how}",
    )


def uses_coreml(runtime: str) -> bool:
    """Whether `runtime` (one of RUNTIMES) runs a package in Core ML: "auto" does on macOS."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    return runtime == "coreml" or (runtime == "auto" and COREML_AVAILABLE)


def export_transcriber(
    export_dir: str | Path, runtime: str = "auto", executor_mode: str = "fp16"
) -> Transcriber:
    """An export directory's package: Core ML on macOS ("auto" or "coreml"), else the executor."""
    use_coreml = uses_coreml(runtime)
    bundle = load_bundle(export_dir)
    if use_coreml:
        logits = coreml_logits(bundle)  # raises off macOS
        how = "Core ML runtime"
    else:
        logits = executor_logits(bundle, package_executor(bundle, executor_mode))
        how = f"package executor, mode {executor_mode}"
    return Transcriber(
        bundle.features, bundle.tokenizer, logits,
        description=f"{bundle.package}: {how}, windows of {bundle.window.window_frames} frames",
    )
