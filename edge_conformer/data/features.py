"""80-bin log-mel features (NeMo's front end) and SpecAugment, computed in the data loader.

The same `LogMelFeatures` runs on the host at inference time (tools/transcribe.py, export
parity), so training and deployment see identical features.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

LOG_GUARD = 2.0**-24  # NeMo's log zero guard: keeps log() finite on digital silence


class LogMelFeatures(nn.Module):
    """Waveform (n,) -> per-feature normalised log-mel (frames, n_mels)."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        n_fft: int = 512,
        win_length_ms: float = 25.0,
        hop_length_ms: float = 10.0,
        preemphasis: float = 0.97,
        dither: float = 1e-5,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.preemphasis = preemphasis
        self.dither = dither
        self.hop_length = int(sample_rate * hop_length_ms / 1000)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=int(sample_rate * win_length_ms / 1000),
            hop_length=self.hop_length,
            n_mels=n_mels,
            window_fn=torch.hann_window,
            power=2.0,
        )

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    @torch.no_grad()
    def forward(
        self, waveform: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if self.dither > 0 and generator is not None:
            waveform = waveform + self.dither * torch.randn(
                waveform.shape, generator=generator, dtype=waveform.dtype
            )
        if self.preemphasis:
            waveform = torch.cat([waveform[:1], waveform[1:] - self.preemphasis * waveform[:-1]])
        log_mel = torch.log(self.mel(waveform) + LOG_GUARD).T  # (frames, n_mels)
        # Per-feature normalisation over the utterance (NeMo "per_feature").
        mean = log_mel.mean(dim=0, keepdim=True)
        std = log_mel.std(dim=0, keepdim=True) if log_mel.shape[0] > 1 else torch.ones_like(mean)
        return (log_mel - mean) / (std + 1e-5)


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
