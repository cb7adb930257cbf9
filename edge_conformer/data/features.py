"""80-bin log-mel features (NeMo's front end) and SpecAugment, computed in the data loader.

The same `LogMelFeatures` runs on the host at inference time (tools/transcribe.py, export
parity), so training and deployment see identical features; runtime/frontend.py computes the
same frames from audio that arrives in pieces. `FeatureSettings` is the one description of the
front end: the config's `data.features`, stored features, checkpoints and frontend.json all
hold its fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

LOG_GUARD = 2.0**-24  # NeMo's log zero guard: keeps log() finite on digital silence
STD_GUARD = 1e-5  # added to standard deviations before dividing (NeMo): flat bins stay finite
# data.features.normalize: "utterance" = each mel bin by the utterance's own mean and std
# (NeMo "per_feature"; needs the whole utterance, so it cannot stream); "global" = by the
# training split's per-bin mean and std; "running" = by the mean and std of the frames so far,
# the training split's standing in for the first ones (Kaldi's online CMVN: streams, and
# adapts to the speaker and channel as the utterance goes on); "none" = raw log-mels.
NORMALIZATIONS = ("utterance", "global", "running", "none")
WITH_TRAINING_STATS = ("global", "running")  # the normalisations that need the training split's
STREAMABLE = ("global", "running", "none")  # those that need no frame after the current one
STREAMABLE_SETTING = f"data.features.normalize={' or '.join(STREAMABLE)}"  # for error messages


@dataclass(frozen=True)
class FeatureSettings:
    """The front end's settings (`data.features` in the config; `FeatureSettings(**dict)`)."""

    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 512
    win_length_ms: float = 25.0
    hop_length_ms: float = 10.0
    preemphasis: float = 0.97
    dither: float = 1e-5
    normalize: str = "utterance"
    # normalize=running: how many frames' worth of weight the training split's statistics
    # keep beside the utterance's own frames (100: after 1 s of 10 ms frames, half and half).
    running_prior_frames: int = 100

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(
                f"data.features.normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}"
            )
        if self.running_prior_frames < 1:
            raise ValueError(f"data.features.running_prior_frames must be >= 1, got "
                             f"{self.running_prior_frames}")

    @property
    def hop_length(self) -> int:
        """Samples between frames: the integer the STFT uses."""
        return int(self.sample_rate * self.hop_length_ms / 1000)

    @property
    def win_length(self) -> int:
        return int(self.sample_rate * self.win_length_ms / 1000)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of `num_samples`: the centred STFT pads n_fft // 2 each side."""
        return 1 + (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length

    def tag(self, *context: object) -> str:
        """A short hash of these settings and `context`: names what is derived from them."""
        key = json.dumps([asdict(self), *context], sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class FeatureStats:
    """Per-mel-bin mean and standard deviation of the training split's log-mels (no dither):
    what `normalize="global"` divides by. Saved as `asdict` in checkpoints and frontend.json."""

    mean: list[float]
    std: list[float]


@dataclass
class RunningMoments:
    """normalize=running's memory of a stream: how many frames it has produced, and their
    per-mel-bin sum and sum of squares (float64: a long stream's sums must not lose the
    newest frames' share). A fresh one starts each utterance."""

    frames: int = 0
    sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    sum_squares: torch.Tensor = field(
        default_factory=lambda: torch.zeros((), dtype=torch.float64))


def preemphasize(waveform: torch.Tensor, coefficient: float, previous: float = 0.0) -> torch.Tensor:
    """y[n] = x[n] - coefficient * x[n-1], with x[-1] = `previous` (0 at the start of a signal,
    so y[0] = x[0]; the last sample of the previous piece when a stream arrives in pieces)."""
    delayed = F.pad(waveform[:-1], (1, 0), value=previous)
    return waveform - coefficient * delayed


class LogMelFeatures(nn.Module):
    """Waveform (n,) -> normalised log-mel (frames, n_mels), as `settings.normalize` says.

    Global normalisation holds the training split's statistics as buffers (`mean`, `std`);
    without them it refuses to exist rather than compute features the model never saw.
    """

    def __init__(
        self, settings: FeatureSettings | None = None, stats: FeatureStats | None = None
    ) -> None:
        super().__init__()
        self.settings = settings = settings or FeatureSettings()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=settings.sample_rate,
            n_fft=settings.n_fft,
            win_length=settings.win_length,
            hop_length=settings.hop_length,
            n_mels=settings.n_mels,
            window_fn=torch.hann_window,
            power=2.0,
        )
        if settings.normalize in WITH_TRAINING_STATS:
            stats = _checked_stats(stats, settings)
            self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float32))

    @classmethod
    def from_saved(cls, settings: Mapping, stats: Mapping | None = None) -> LogMelFeatures:
        """The front end a checkpoint or frontend.json describes, as the plain dicts they hold
        (settings saved before a field existed take its default)."""
        return cls(FeatureSettings(**settings), FeatureStats(**stats) if stats else None)

    @property
    def sample_rate(self) -> int:
        return self.settings.sample_rate

    @property
    def n_mels(self) -> int:
        return self.settings.n_mels

    @property
    def stats(self) -> FeatureStats | None:
        """The training split's statistics this front end normalises by (None unless
        normalize is global or running)."""
        if self.settings.normalize not in WITH_TRAINING_STATS:
            return None
        return FeatureStats(self.mean.tolist(), self.std.tolist())

    @torch.no_grad()
    def forward(
        self, waveform: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Dither is drawn only with a `generator` (training); inference passes none."""
        if self.settings.dither > 0 and generator is not None:
            waveform = waveform + self.settings.dither * torch.randn(
                waveform.shape, generator=generator, dtype=waveform.dtype
            )
        return self.normalize(self.log_mel(waveform))

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel (frames, n_mels) of a waveform, without dither."""
        waveform = preemphasize(waveform, self.settings.preemphasis)
        return self.log_mel_of_power(self.mel.spectrogram(waveform))

    def log_mel_of_power(self, power: torch.Tensor) -> torch.Tensor:
        """Power spectrogram (n_fft // 2 + 1, frames) -> log-mel (frames, n_mels)."""
        return torch.log(self.mel.mel_scale(power) + LOG_GUARD).T

    def normalize(self, log_mel: torch.Tensor, moments: RunningMoments | None = None
                  ) -> torch.Tensor:
        """Normalised log-mel (frames, n_mels). normalize=running continues the stream whose
        `moments` are given (and updates them), else starts a new one."""
        mode = self.settings.normalize
        if mode == "global":
            return (log_mel - self.mean) / (self.std + STD_GUARD)
        if mode == "running":
            return self._normalize_running(log_mel, moments or RunningMoments())
        if mode == "none":
            return log_mel
        # Per-feature normalisation over the utterance (NeMo "per_feature").
        mean = log_mel.mean(dim=0, keepdim=True)
        std = log_mel.std(dim=0, keepdim=True) if log_mel.shape[0] > 1 else torch.ones_like(mean)
        return (log_mel - mean) / (std + STD_GUARD)

    def _normalize_running(self, log_mel: torch.Tensor, moments: RunningMoments) -> torch.Tensor:
        """Frame t by the mean and std of frames 0..t, with the training split's statistics
        counted as `running_prior_frames` frames more: causal, so a stream's pieces give the
        whole utterance's frames; each frame costs the same however long the stream."""
        frames = log_mel.double()
        seen = moments.frames + torch.arange(1, len(frames) + 1, dtype=torch.float64)[:, None]
        sums = moments.sum + frames.cumsum(0)
        sums_squares = moments.sum_squares + frames.square().cumsum(0)
        if len(frames):
            moments.frames += len(frames)
            moments.sum, moments.sum_squares = sums[-1], sums_squares[-1]
        prior = float(self.settings.running_prior_frames)
        global_mean, global_std = self.mean.double(), self.std.double()
        weight = prior + seen
        mean = (prior * global_mean + sums) / weight
        second_moment = (prior * (global_std.square() + global_mean.square()) + sums_squares)
        std = (second_moment / weight - mean.square()).clamp_min(0).sqrt()
        return ((frames - mean) / (std + STD_GUARD)).float()


def _checked_stats(stats: FeatureStats | None, settings: FeatureSettings) -> FeatureStats:
    knob = f"data.features.normalize={settings.normalize}"
    if stats is None:
        raise ValueError(
            f"{knob} needs the training split's per-mel-bin statistics "
            "(computed by the DataModule's prepare_data, carried in checkpoints and "
            "frontend.json), and none were given"
        )
    if not len(stats.mean) == len(stats.std) == settings.n_mels:
        raise ValueError(
            f"{knob}: statistics for {len(stats.mean)} means and "
            f"{len(stats.std)} deviations do not fit data.features.n_mels={settings.n_mels}"
        )
    return stats


class SpecAugment(nn.Module):
    """Frequency and time masks (NeMo defaults: 2 x width 27, 5 x 5% of the utterance).

    Masks are drawn from an explicit generator so that an augmented batch depends only on
    (seed, epoch, cut ids): that is what makes resumed training repeat an uninterrupted run.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 5,
        time_width: float = 0.05,
    ) -> None:
        super().__init__()
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.time_masks = time_masks
        self.time_width = time_width

    @staticmethod
    def _mask(features: torch.Tensor, axis: int, max_width: int, gen: torch.Generator) -> None:
        size = features.shape[axis]
        width = int(torch.randint(0, max_width + 1, (1,), generator=gen))
        width = min(width, size)
        start = int(torch.randint(0, size - width + 1, (1,), generator=gen))
        features.narrow(axis, start, width).zero_()

    def forward(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """features: (frames, n_mels), normalised so 0 is the mean; masked in place on a copy."""
        features = features.clone()
        for _ in range(self.freq_masks):
            self._mask(features, 1, self.freq_width, generator)
        max_time_width = int(self.time_width * features.shape[0])
        for _ in range(self.time_masks):
            self._mask(features, 0, max_time_width, generator)
        return features
