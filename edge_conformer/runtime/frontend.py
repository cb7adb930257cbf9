"""The host's streaming front end: log-mel frames while audio arrives, in pieces of any size.

`StreamingLogMel.accept(samples)` returns every frame whose samples are all in; `flush()` the
last frames at the end of the stream. Together they are exactly the frames `LogMelFeatures`
computes on the whole waveform (no dither), for `normalize` "global", "running" or "none"
("running" carries the stream's frame sums from piece to piece); "utterance" needs the whole
utterance's statistics and cannot stream.

What `LogMelFeatures` (torchaudio's centred STFT) does, and how a stream reproduces it:
- pre-emphasis y[n] = x[n] - a x[n-1] carries one sample from a piece to the next;
- frame t spans y[t*hop - n_fft/2, t*hop + n_fft/2), where indices below 0 mirror into the
  signal (reflect padding: y[-i] = y[i]) and indices past the end N mirror back from it
  (y[N-1+i] = y[N-1-i]); so the end's frames wait for `flush`, when N is known;
- the Hann window (win_length samples) sits in the middle of the n_fft span and the rest of the
  span is weighted 0, so a frame is emitted as soon as its windowed samples are in: frame t at
  t*hop + `lookahead_samples` samples (win_length / 2 past its centre for even sizes), not
  t*hop + n_fft/2. Samples weighted 0 that have not arrived yet are filled with 0: exact.
Only the samples later frames still need are kept, so a piece costs the same late in a stream
as early.
"""

from __future__ import annotations

import numpy as np
import torch

from edge_conformer.data.features import (
    STREAMABLE,
    STREAMABLE_SETTING,
    LogMelFeatures,
    RunningMoments,
    preemphasize,
)


class StreamingLogMel:
    """Incremental `LogMelFeatures`: `accept` pieces of a stream, `flush` at its end.

    After `flush` the object starts a new stream.
    """

    def __init__(self, features: LogMelFeatures) -> None:
        if features.settings.normalize not in STREAMABLE:
            raise ValueError(
                f"data.features.normalize={features.settings.normalize} normalises by the "
                "whole utterance's statistics and cannot stream: use a model trained with "
                f"{STREAMABLE_SETTING}"
            )
        self.features = features
        settings = features.settings
        self.hop = settings.hop_length
        self.n_fft = settings.n_fft
        self.pad = settings.n_fft // 2  # the centred STFT's reflect padding on each side
        # Where the window's nonzero weights lie within a frame's n_fft span (torch.stft
        # centres a shorter window in the span).
        self.window_start = (settings.n_fft - settings.win_length) // 2
        self.window_end = self.window_start + settings.win_length
        self._start_stream()

    def _start_stream(self) -> None:
        self._signal = torch.zeros(0)  # pre-emphasised samples from index `_kept_from` on
        self._kept_from = 0
        self._received = 0  # samples of the stream so far
        self._previous = 0.0  # the last raw sample: pre-emphasis of the next piece needs it
        self._next_frame = 0
        self._moments = RunningMoments()  # normalize=running: the stream's frames so far

    @property
    def frames_per_second(self) -> float:
        return self.features.settings.frames_per_second

    @property
    def lookahead_samples(self) -> int:
        """Samples past frame t's centre (sample t * hop) that must arrive before frame t is
        emitted: the window's right half. The first frame also needs one more sample (reflect
        padding mirrors y[1...] into its left half)."""
        return self.window_end - self.pad

    def accept(self, samples: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The frames (k, n_mels) completed by this piece of mono audio (k may be 0)."""
        piece = torch.as_tensor(samples, dtype=torch.float32)
        if piece.dim() != 1:
            raise ValueError(
                f"the streaming front end takes mono samples (n,), got shape {tuple(piece.shape)}"
            )
        if piece.numel():
            emphasized = preemphasize(piece, self.features.settings.preemphasis, self._previous)
            self._previous = float(piece[-1])
            self._signal = torch.cat([self._signal, emphasized])
            self._received += piece.numel()
        frames = self._frames(self._next_frame, self._ready_frames(), end=None)
        self._forget_used_samples()
        return frames

    def flush(self) -> torch.Tensor:
        """The stream's last frames (those that needed its end); then a new stream starts."""
        length = self._received
        try:
            if length <= self.pad:
                raise ValueError(
                    f"a stream of {length} samples is too short for the centred STFT, whose "
                    f"reflect padding needs more than n_fft / 2 = {self.pad} samples"
                )
            total = self.features.settings.num_frames(length)
            return self._frames(self._next_frame, total, end=length)
        finally:
            self._start_stream()

    def _ready_frames(self) -> int:
        """How many frames of the stream can be computed from the samples received so far."""
        received = self._received
        if received <= self.pad - self.window_start:
            return 0  # frame 0's windowed left half mirrors samples that have not arrived
        # Frame t's last windowed sample is t*hop - pad + window_end - 1 < received; and the
        # frame must exist in a stream of `received` samples (it then exists in any longer one).
        windowed = (received - self.lookahead_samples) // self.hop + 1
        existing = self.features.settings.num_frames(received)
        return max(self._next_frame, min(windowed, existing))

    def _frames(self, first: int, stop: int, end: int | None) -> torch.Tensor:
        """Normalised log-mel of frames [first, stop); `end`: the stream's length once known."""
        self._next_frame = max(first, stop)
        if stop <= first:
            return torch.zeros(0, self.features.n_mels)
        start = first * self.hop - self.pad
        span = self._span(start, start + (stop - 1 - first) * self.hop + self.n_fft, end)
        spectrogram = self.features.mel.spectrogram
        power = torch.stft(
            span, n_fft=self.n_fft, hop_length=self.hop, win_length=spectrogram.win_length,
            window=spectrogram.window, center=False, return_complex=True,
        ).abs().pow(2.0)
        return self.features.normalize(self.features.log_mel_of_power(power), self._moments)

    def _span(self, start: int, stop: int, end: int | None) -> torch.Tensor:
        """Pre-emphasised samples [start, stop) of the stream, reflect-padded at its ends;
        samples not received yet are 0 (they fall where the window weighs 0)."""
        index = torch.arange(start, stop).abs()  # the left edge mirrors: y[-i] = y[i]
        if end is not None:
            index = torch.where(index >= end, 2 * (end - 1) - index, index)
        received = index < self._received
        position = (index - self._kept_from).clamp(max=len(self._signal) - 1)
        return torch.where(received, self._signal[position], torch.zeros(()))

    def _forget_used_samples(self) -> None:
        """Drop samples no pending frame can need: neither its span nor, at the end, a mirror
        image of the last n_fft / 2 samples."""
        needed_from = min(self._next_frame * self.hop - self.pad, self._received - 1 - self.pad)
        drop = max(0, needed_from - self._kept_from)
        if drop:
            self._signal = self._signal[drop:]
            self._kept_from += drop
