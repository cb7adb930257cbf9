"""The streaming recogniser: text while the user speaks, at a fixed cost per chunk.

    audio pieces (any size; other rates/channels through `StreamingResampler`)
      -> StreamingLogMel (frontend.py): log-mel frames as soon as their samples are in
      -> frames buffered into chunks of 4C (C encoder frames after 4x subsampling)
      -> a chunk backend: the FP32 model's `forward_chunk` (`TorchChunks`), or the exported
         stream package (`PackageChunks`: the MIL executor anywhere, Core ML on macOS)
      -> greedy CTC, extended chunk by chunk (`IncrementalGreedyCTC`)

Greedy CTC is prefix-stable: a frame's best class and whether it starts a new token depend only
on that frame and the one before, so decoding each chunk's logits after the last chunk's gives
exactly what decoding all logits at once gives, and a transcript only ever grows. Nothing
kept from one chunk to the next grows with the stream: the front end keeps the samples its
next frames need, fewer than 4C feature frames wait for the next chunk, the backend's caches
have fixed shapes (a finite left context), and the decoder keeps one frame's class. Only the
transcript itself grows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torchaudio.transforms

from edge_conformer.data.audio import to_mono
from edge_conformer.data.features import STREAMABLE, STREAMABLE_SETTING, LogMelFeatures
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.errors import UserInputError
from edge_conformer.model.conformer import ConformerCTC
from edge_conformer.model.streaming import ChunkContext, StreamingState
from edge_conformer.model.subsampling import output_frames
from edge_conformer.runtime.bundle import (
    BLANK_INDEX,
    FRONTEND_FILE,
    coreml_predict,
    load_bundle,
    package_executor,
)
from edge_conformer.runtime.checkpoint import LoadedCheckpoint
from edge_conformer.runtime.frontend import StreamingLogMel
from edge_conformer.runtime.stream_package import StreamPackage
from edge_conformer.runtime.transcriber import uses_coreml

# conf/model/*.yaml's deployed setting (model.streaming.eval_chunk/eval_left), for checkpoints
# whose config predates it: 640 ms chunks, 2.56 s left context.
DEFAULT_CHUNK_FRAMES = 16
DEFAULT_LEFT_FRAMES = 64


class ChunkBackend(Protocol):
    """Runs a stream's chunks: `step` one chunk of feature frames, `reset` for a new stream."""

    feature_frames: int  # feature frames per chunk: 4C

    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Feature frames (k <= 4C, n_mels), all 4C but in a stream's last chunk -> the logits
        (valid encoder frames of this chunk, vocab + 1)."""
        ...

    def reset(self) -> None:
        """Zero caches: the next `step` is a new stream's first chunk."""
        ...


class TorchChunks:
    """The PyTorch model's chunk loop (`ConformerCTC.forward_chunk`), FP32."""

    def __init__(self, model: ConformerCTC, context: ChunkContext) -> None:
        self.model = model
        self.context = context
        self.feature_frames = context.feature_frames
        self.reset()

    def reset(self) -> None:
        self.state = StreamingState.initial(self.model, self.context)

    @torch.no_grad()
    def step(self, features: torch.Tensor) -> torch.Tensor:
        valid = features.shape[0]
        padded = torch.nn.functional.pad(features, (0, 0, 0, self.feature_frames - valid))
        valid_frames = torch.tensor([valid])
        logits, self.state = self.model.forward_chunk(padded[None], self.state, valid_frames)
        return logits[0, : output_frames(valid)]


class PackageChunks:
    """An exported stream package run through its host-side runner (`StreamPackage`)."""

    def __init__(self, package: StreamPackage) -> None:
        self.package = package
        self.feature_frames = package.feature_frames
        self.reset()

    def reset(self) -> None:
        self.caches = self.package.initial_caches()

    def step(self, features: torch.Tensor) -> torch.Tensor:
        logits, self.caches = self.package.step(features, self.caches)
        return logits


class IncrementalGreedyCTC:
    """Greedy CTC over logits that arrive chunk by chunk: equal to `collapse_ctc` over all of
    them, at a cost per chunk independent of what came before."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []  # SentencePiece ids (blank removed)
        self.last_class = BLANK_INDEX  # the previous frame's best class: merges repeats

    def extend(self, logits: torch.Tensor) -> bool:
        """Decode the next frames' logits (frames, vocab + 1); True when tokens were added."""
        best = logits.argmax(dim=-1).cpu()
        if best.numel() == 0:
            return False
        previous = torch.cat([torch.tensor([self.last_class]), best[:-1]])
        new_tokens = best[(best != previous) & (best != BLANK_INDEX)]
        self.last_class = int(best[-1])
        self.tokens.extend((new_tokens - 1).tolist())  # logit i + 1 is SentencePiece id i
        return new_tokens.numel() > 0


class StreamingResampler:
    """torchaudio's sinc resampling (as `read_audio` applies it to a whole file), in pieces.

    Output block b (new_rate/gcd samples) is one window of the input, [b * step - width,
    b * step + step + width) with step = source_rate/gcd; a block is computed as soon as its
    window is in, and only the input the next blocks need is kept. `flush` pads the end with
    zeros as `torchaudio.functional.resample` does and trims to its length.
    """

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate = source_rate
        resample = torchaudio.transforms.Resample(source_rate, target_rate)
        self.kernel = resample.kernel  # (new, 1, 2 * width + step)
        self.width = resample.width
        self.step = source_rate // resample.gcd
        self.new = target_rate // resample.gcd
        # Input samples, zero-padded by `width` at the start, from padded index `kept_from` on.
        self.buffer = torch.zeros(self.width)
        self.kept_from = 0
        self.received = 0
        self.emitted = 0
        self.next_block = 0

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        """The output samples completed by this piece (mono, at the source rate)."""
        self.buffer = torch.cat([self.buffer, samples])
        self.received += samples.numel()
        return self._blocks()

    def flush(self) -> torch.Tensor:
        """The output's last samples; `torchaudio.functional.resample` pads width + step zeros
        past the end and keeps ceil(new * length / step) samples."""
        self.buffer = torch.cat([self.buffer, torch.zeros(self.width + self.step)])
        total = -(-self.new * self.received // self.step)
        return self._blocks()[: total - self.emitted]

    def _blocks(self) -> torch.Tensor:
        window = self.kernel.shape[-1]
        end = self.kept_from + len(self.buffer)
        ready = (end - window) // self.step + 1 if end >= window else 0
        if ready <= self.next_block:
            return torch.zeros(0)
        start = self.next_block * self.step - self.kept_from
        span = self.buffer[start : (ready - 1) * self.step + window - self.kept_from]
        out = torch.nn.functional.conv1d(span[None, None], self.kernel, stride=self.step)
        out = out[0].T.reshape(-1)  # (new, blocks) -> block after block
        self.next_block = ready
        self.buffer = self.buffer[ready * self.step - self.kept_from :]
        self.kept_from = ready * self.step
        self.emitted += out.numel()
        return out


class StreamingRecognizer:
    """Audio in pieces of any size -> the transcript so far, chunk by chunk.

    `accept(samples)` feeds a piece and returns the whole transcript recognised so far when
    the piece completed at least one chunk (even if the text did not change: a chunk's worth
    of audio was recognised), None when no chunk completed. `finish()` runs the stream's last
    frames (the front end's end frames and a last partial chunk) and returns the final
    transcript; the recogniser is then ready for a new stream (`reset()` abandons one).
    """

    def __init__(
        self,
        features: LogMelFeatures,
        tokenizer: Tokenizer,
        backend: ChunkBackend,
        description: str,
    ) -> None:
        self.features = features
        self.tokenizer = tokenizer
        self.backend = backend
        self.description = description  # what runs: model, backend, chunk geometry
        self.decoder = IncrementalGreedyCTC()
        self.reset()

    @property
    def sample_rate(self) -> int:
        """The model's sample rate: `accept` takes other rates when told (`sample_rate=`)."""
        return self.features.sample_rate

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio fed into the current stream."""
        return self.input_samples / self.input_rate

    @property
    def text(self) -> str:
        """The transcript recognised so far."""
        return self._text

    def reset(self) -> None:
        """Drop the current stream (if any): the next `accept` starts a new one."""
        self.frontend = StreamingLogMel(self.features)
        self.resampler: StreamingResampler | None = None
        self.pending = torch.zeros(0, self.features.n_mels)  # frames short of a whole chunk
        self.model_samples = 0  # at the model's rate, into the front end
        self.input_samples = 0
        self.input_rate = self.sample_rate
        self.backend.reset()
        self.decoder.reset()
        self._text = ""

    def accept(
        self, samples: torch.Tensor | np.ndarray, sample_rate: int | None = None
    ) -> str | None:
        """Feed a piece of the stream: (n,) float samples at the model's rate, or at
        `sample_rate` (resampled), or (channels, n) (down-mixed). Returns the transcript so far
        if the piece completed a chunk, else None. A stream keeps one rate."""
        piece = to_mono(samples)
        at_model_rate = self._at_model_rate(piece, sample_rate or self.sample_rate)
        self.input_samples += piece.numel()
        completed = self._run_chunks(self._frames(at_model_rate))
        return self._text if completed else None

    def finish(self) -> str:
        """The stream's final transcript; then a new stream starts."""
        if self.resampler is not None:
            self._run_chunks(self._frames(self.resampler.flush()))
        # A stream of at most n_fft / 2 samples holds no frame (the centred STFT's reflect
        # padding needs more): no speech, an empty transcript.
        if self.model_samples > self.frontend.pad:
            self._run_chunks(self.frontend.flush())
            if len(self.pending):
                self._run_chunk(self.pending)
        text = self._text
        self.reset()
        return text

    def _at_model_rate(self, piece: torch.Tensor, rate: int) -> torch.Tensor:
        if self.input_samples and rate != self.input_rate:
            raise ValueError(
                f"a stream keeps one sample rate: it started at {self.input_rate} Hz, this "
                f"piece is at {rate} Hz (finish() or reset() first)"
            )
        self.input_rate = rate
        if rate == self.sample_rate:
            return piece
        if self.resampler is None:
            self.resampler = StreamingResampler(rate, self.sample_rate)
        return self.resampler.accept(piece)

    def _frames(self, samples: torch.Tensor) -> torch.Tensor:
        self.model_samples += samples.numel()
        return self.frontend.accept(samples)

    def _run_chunks(self, frames: torch.Tensor) -> bool:
        """Run every whole chunk the new frames complete; True if there was one."""
        self.pending = torch.cat([self.pending, frames])
        size = self.backend.feature_frames
        chunks = len(self.pending) // size
        for index in range(chunks):
            self._run_chunk(self.pending[index * size : (index + 1) * size])
        self.pending = self.pending[chunks * size :]
        return chunks > 0

    def _run_chunk(self, frames: torch.Tensor) -> None:
        if self.decoder.extend(self.backend.step(frames)):
            self._text = self.tokenizer.decode(self.decoder.tokens)


def configured_context(
    model_config: Mapping[str, Any], chunk_frames: int | None = None,
    left_frames: int | None = None,
) -> ChunkContext:
    """The chunk context to stream a checkpoint with: the given frames, else its config's
    deployed setting (model.streaming.eval_chunk / eval_left), else 16 / 64."""
    streaming = model_config.get("streaming") or {}
    if chunk_frames is None:
        chunk_frames = streaming.get("eval_chunk", DEFAULT_CHUNK_FRAMES)
    if left_frames is None:
        left_frames = streaming.get("eval_left", DEFAULT_LEFT_FRAMES)
    return ChunkContext(chunk_frames, left_frames)


def check_streamable(source: Path | str, conv_context: str, normalize: str) -> None:
    """UserInputError naming `source` and the knob if its model or front end cannot stream."""
    if conv_context == "symmetric":
        raise UserInputError(
            f"{source}: model.conv_context=symmetric cannot stream (its convolution taps read "
            f"the next chunk): train with model.conv_context=chunk or causal"
        )
    if normalize not in STREAMABLE:
        raise UserInputError(
            f"{source}: data.features.normalize={normalize} cannot stream (it needs the whole "
            f"utterance's statistics): train with {STREAMABLE_SETTING}"
        )


def checkpoint_recognizer(loaded: LoadedCheckpoint, context: ChunkContext) -> StreamingRecognizer:
    """Stream a checkpoint's FP32 model chunk by chunk (`forward_chunk`) under `context`."""
    check_streamable(loaded.path, loaded.model.conv_context, loaded.features.settings.normalize)
    if context.left_frames < 0:
        raise UserInputError(
            f"{loaded.path}: streaming needs a finite left context, got left_frames=-1: with "
            f"every past frame kept, each chunk would cost more than the last"
        )
    return StreamingRecognizer(
        loaded.features, loaded.tokenizer, TorchChunks(loaded.model, context),
        description=f"{loaded.path}: PyTorch FP32 chunk loop, {geometry(context, loaded.features)}",
    )


def export_recognizer(
    export_dir: str | Path, runtime: str = "auto", executor_mode: str = "fp16"
) -> StreamingRecognizer:
    """An export directory's streaming package (frontend.json's `streaming` section): in Core
    ML on macOS ("auto" or "coreml"), else in the MIL package executor."""
    use_coreml = uses_coreml(runtime)
    bundle = load_bundle(export_dir)
    streaming, frontend_file = bundle.streaming, bundle.directory / FRONTEND_FILE
    if streaming is None:
        raise UserInputError(
            f"{bundle.directory}: the export has no streaming package (no 'streaming' section "
            f"in {FRONTEND_FILE}); export a model trained with model.conv_context=chunk or "
            f"causal and {STREAMABLE_SETTING}"
        )
    try:
        package_path = bundle.directory / streaming["package"]
        context = ChunkContext(streaming["chunk_frames"], streaming["left_frames"])
        conv_context = streaming["conv_context"]
    except (KeyError, TypeError, ValueError) as error:
        raise UserInputError(f"{frontend_file}: not a streaming section ({error!r})") from error
    check_streamable(frontend_file, conv_context, bundle.features.settings.normalize)
    if use_coreml:
        predict, how = coreml_predict(package_path), "Core ML runtime"
    else:
        executor = package_executor(bundle, executor_mode, package_path)
        predict = lambda inputs: executor(**inputs)
        how = f"package executor, mode {executor_mode}"
    try:
        package = StreamPackage(predict, streaming)
    except ValueError as error:  # shapes missing from the section
        raise UserInputError(f"{frontend_file}: {error}") from error
    return StreamingRecognizer(
        bundle.features, bundle.tokenizer, PackageChunks(package),
        description=f"{package_path}: {how}, {geometry(context, bundle.features)}",
    )


def geometry(context: ChunkContext, features: LogMelFeatures) -> str:
    """A chunk context in words, for the user."""
    seconds = context.feature_frames / features.settings.frames_per_second
    return (
        f"chunks of {context.chunk_frames} encoder frames ({seconds:.2f} s), "
        f"{context.left_frames} frames of left context"
    )
