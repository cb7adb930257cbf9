"""Transcribe audio files with a checkpoint (PyTorch FP32) or an export directory (its package).

Any sample rate and channel count soundfile reads: audio is down-mixed and resampled to the
model's rate, then featurised exactly as in parity checking, and decoded greedily (as there)
or by beam search (`Transcriber.with_decoding`). Each file gives a `Transcript`: the text, its
words with times and confidences (edge_conformer/decode/timestamps.py), what ran, and how long
it took.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_conformer.config.schemas import DecodeSettings
from edge_conformer.data.audio import read_audio
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode.beam import Decoder, greedy_decoder, make_decoder
from edge_conformer.decode.timestamps import WordTiming, word_timings
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
class Transcript:
    """One file's result; `to_json` is what `tools/transcribe.py --format json` prints."""

    path: str
    text: str
    words: list[WordTiming]
    model: str  # what ran: which model or package, graph, precision and windowing
    decoder: str  # "greedy", or the beam search's settings
    audio_seconds: float
    compute_seconds: float  # features, model, decoding and timestamps (not reading the file)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "words": [word.to_json() for word in self.words]}


@dataclass(frozen=True)
class Transcriber:
    features: LogMelFeatures
    tokenizer: Tokenizer
    logits: LogitsFn
    description: str  # what runs: which model, graph, precision and windowing
    decoder: Decoder = field(default_factory=greedy_decoder)

    def with_decoding(self, settings: DecodeSettings) -> Transcriber:
        """The same model decoded as `settings` say (UserInputError for an unusable lexicon
        or LM file)."""
        return dataclasses.replace(self, decoder=make_decoder(settings, self.tokenizer))

    def __call__(self, audio_path: str | Path) -> Transcript:
        """The transcript of one file; BadAudioError (naming the file) if it is unusable."""
        waveform = read_audio(audio_path, self.features.sample_rate)
        started = time.perf_counter()
        log_probs = self.logits(self.features(waveform)).float().log_softmax(dim=-1)
        token_ids = self.decoder(log_probs)
        log_mel = self.features.log_mel(waveform)
        words = word_timings(log_probs, token_ids, self.tokenizer, log_mel,
                             self.features.settings.frames_per_second)
        return Transcript(
            path=str(audio_path), text=self.tokenizer.decode(token_ids), words=words,
            model=self.description, decoder=self.decoder.description,
            audio_seconds=round(len(waveform) / self.features.sample_rate, 3),
            compute_seconds=round(time.perf_counter() - started, 4),
        )


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
        description=f"{bundle.package}: FP16 package, {how}, "
                    f"windows of {bundle.window.window_frames} frames",
    )
