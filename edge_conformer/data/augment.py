"""Waveform augmentation in training: speed perturbation, equalisation, reverberation, additive
noise, gain.

What a speech engineer applies to a corpus of few speakers (FSDD has five adult men): speed
perturbation resamples the audio, which shifts formants and pitch as a shorter or longer vocal
tract would (Ko et al. 2015, Kaldi's 0.9/1.0/1.1); equalisation colours the spectrum with a
smooth random curve, as another microphone, room or voice quality would (what per-utterance
normalisation removes, and streamable normalisations do not); reverberation convolves with a
synthetic room impulse response; noise is synthetic coloured noise (white, pink, brown:
generated here, nothing to download) at a random signal-to-noise ratio; gain scales the level.

Every draw comes from the batch's generator (AsrDataset._generator), like SpecAugment's masks,
so an augmented batch depends only on (seed, epoch, cut ids) and resumed training repeats the
uninterrupted run. `AugmentSettings` is the typed description (`data.augment` in the config;
each stage `None` = off).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torchaudio
import torchaudio.functional as AF

# Power spectrum exponent of each noise colour: P(f) ~ 1 / f^exponent.
NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
# An amplitude envelope exp(-DECAY_60DB * t / rt60) falls by 60 dB at t = rt60 (3 ln 10).
DECAY_60DB = 3 * math.log(10)
# Samples of padding before an equaliser's FFT: a curve of a few cosines over the band has an
# impulse response a few samples long on either side of zero.
EQ_MARGIN = 256


@dataclass(frozen=True)
class SpeedSettings:
    """Resample by a factor drawn from `factors`: 1.1 is 10 % faster (shorter, higher)."""

    factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    prob: float = 1.0


@dataclass(frozen=True)
class GainSettings:
    """Scale by a gain drawn uniformly from `db` = (low, high) decibels."""

    db: tuple[float, float] = (-6.0, 6.0)
    prob: float = 1.0


@dataclass(frozen=True)
class EqSettings:
    """Colour the spectrum by a smooth zero-phase gain curve over 0..Nyquist: the sum of
    `bands` cosines (k half-periods each, k = 1..bands) with amplitudes drawn uniformly from
    +-`db` decibels. The output keeps the input's RMS level (the gain stage sets levels)."""

    db: float = 5.0
    bands: int = 4
    prob: float = 0.5


@dataclass(frozen=True)
class NoiseSettings:
    """Add noise of a colour drawn from `colors` at an SNR drawn uniformly from `snr_db`
    (signal power over the whole utterance, pauses included, as torchaudio's add_noise)."""

    snr_db: tuple[float, float] = (10.0, 40.0)
    colors: tuple[str, ...] = ("white", "pink", "brown")
    prob: float = 0.5


@dataclass(frozen=True)
class ReverbSettings:
    """Convolve with a synthetic room response: a unit direct path, then Gaussian noise decaying
    by 60 dB over an RT60 drawn from `rt60` seconds, scaled so that the direct-to-reverberant
    energy ratio is drawn from `drr_db`. The output keeps the input's length and RMS level."""

    rt60: tuple[float, float] = (0.2, 0.8)
    drr_db: tuple[float, float] = (0.0, 10.0)
    prob: float = 0.3


@dataclass(frozen=True)
class AugmentSettings:
    """`data.augment`: each stage `None` is off."""

    speed: SpeedSettings | None = None
    eq: EqSettings | None = None
    reverb: ReverbSettings | None = None
    noise: NoiseSettings | None = None
    gain: GainSettings | None = None

    @classmethod
    def from_config(cls, config: Mapping | None) -> AugmentSettings | None:
        """The settings a `data.augment` mapping describes (None or no stage: None). A stage
        with prob 0 is left out: it takes no draws from the generator, so turning a stage on
        in the config at prob 0 leaves every other stage's draws, and the run, as they were."""
        if not config:
            return None
        stages = {name: STAGES[name](**stage) for name, stage in config.items() if stage}
        settings = cls(**{name: stage for name, stage in stages.items() if stage.prob > 0})
        return settings if settings.enabled else None

    @property
    def enabled(self) -> bool:
        """Whether any stage can change the audio (a stage with prob 0 cannot)."""
        stages = (getattr(self, name) for name in STAGES)
        return any(stage is not None and stage.prob > 0 for stage in stages)


# Each stage's settings, in the order the stages apply.
STAGES = {"speed": SpeedSettings, "eq": EqSettings, "reverb": ReverbSettings,
          "noise": NoiseSettings, "gain": GainSettings}


def _uniform(low_high: tuple[float, float], gen: torch.Generator) -> float:
    low, high = low_high
    return low + (high - low) * float(torch.rand((), generator=gen))


def _choice(options: tuple, gen: torch.Generator):
    return options[int(torch.randint(len(options), (), generator=gen))]


def _fft_length(num_samples: int) -> int:
    """The power of two at or above `num_samples`: an FFT of an utterance's own length (often
    with a large prime factor) took up to 10x longer."""
    return 1 << (num_samples - 1).bit_length()


@functools.lru_cache(maxsize=16)
def _noise_shape(length: int, exponent: float) -> torch.Tensor:
    """Amplitude gains per rfft bin that make white noise's power fall as 1/f^exponent (few
    distinct lengths: FFT lengths are powers of two)."""
    freqs = torch.arange(length // 2 + 1, dtype=torch.float32)
    freqs[0] = 1.0  # no DC offset boost: bin 0 shaped as the lowest non-zero bin
    return freqs ** (-exponent / 2)


def coloured_noise(num_samples: int, color: str, gen: torch.Generator) -> torch.Tensor:
    """Unit-variance noise whose power spectrum falls as 1/f^k (white k=0, pink 1, brown 2),
    shaped in the frequency domain from white Gaussian noise."""
    exponent = NOISE_COLORS[color]
    if exponent == 0:
        return torch.randn(num_samples, generator=gen)
    length = _fft_length(num_samples)
    spectrum = torch.fft.rfft(torch.randn(length, generator=gen)) * _noise_shape(length, exponent)
    noise = torch.fft.irfft(spectrum, n=length)[:num_samples]
    return noise / noise.std().clamp_min(1e-12)


def eq_curve_db(num_bins: int, settings: EqSettings, gen: torch.Generator) -> torch.Tensor:
    """Decibels per rfft bin (0..Nyquist) of a random smooth equaliser (`EqSettings`)."""
    position = torch.linspace(0.0, math.pi, num_bins)
    curve = torch.zeros(num_bins)
    for k in range(1, settings.bands + 1):
        curve += _uniform((-settings.db, settings.db), gen) * torch.cos(k * position)
    return curve


def fft_convolve(signal: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """`signal` convolved with `response`, its first len(signal) samples (a causal filter)."""
    length = _fft_length(signal.numel() + response.numel() - 1)
    product = torch.fft.rfft(signal, n=length) * torch.fft.rfft(response, n=length)
    return torch.fft.irfft(product, n=length)[: signal.numel()]


def room_response(
    sample_rate: int, rt60: float, drr_db: float, gen: torch.Generator
) -> torch.Tensor:
    """A synthetic room impulse response: 1 at t=0, then exponentially decaying noise."""
    length = max(2, int(rt60 * sample_rate))
    t = torch.arange(1, length, dtype=torch.float32) / sample_rate
    tail = torch.randn(length - 1, generator=gen) * torch.exp(-DECAY_60DB * t / rt60)
    tail = tail * (10 ** (-drr_db / 20) / tail.norm().clamp_min(1e-12))
    return torch.cat([torch.ones(1), tail])


class WaveformAugment:
    """Applies `AugmentSettings` to a mono waveform (n,) at `sample_rate`.

    Each stage draws whether it applies, then its parameters, from the caller's generator, in
    a fixed order. Resampling kernels are built once per speed factor and kept: building one
    costs more than applying it.
    """

    def __init__(self, settings: AugmentSettings, sample_rate: int) -> None:
        self.settings = settings
        self.sample_rate = sample_rate
        self._resamplers: dict[float, torchaudio.transforms.Resample] = {}

    def _resampler(self, factor: float) -> torchaudio.transforms.Resample:
        if factor not in self._resamplers:
            # Played back at sample_rate, audio resampled from sample_rate * factor is `factor`
            # times faster (lhotse's and Kaldi's speed perturbation).
            self._resamplers[factor] = torchaudio.transforms.Resample(
                round(self.sample_rate * factor), self.sample_rate
            )
        return self._resamplers[factor]

    @staticmethod
    def _applies(prob: float, gen: torch.Generator) -> bool:
        return float(torch.rand((), generator=gen)) < prob

    def speed(self, waveform: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        factor = _choice(self.settings.speed.factors, gen)
        return waveform if factor == 1.0 else self._resampler(factor)(waveform)

    def eq(self, waveform: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # Room for the zero-phase response's tails, so that they do not wrap onto the audio.
        length = _fft_length(waveform.numel() + EQ_MARGIN)
        curve_db = eq_curve_db(length // 2 + 1, self.settings.eq, gen)
        spectrum = torch.fft.rfft(waveform, n=length) * 10 ** (curve_db / 20)
        coloured = torch.fft.irfft(spectrum, n=length)[: waveform.numel()]
        return coloured * (waveform.norm() / coloured.norm().clamp_min(1e-12))

    def reverb(self, waveform: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        stage = self.settings.reverb
        rir = room_response(self.sample_rate, _uniform(stage.rt60, gen),
                            _uniform(stage.drr_db, gen), gen)
        wet = fft_convolve(waveform, rir)
        return wet * (waveform.norm() / wet.norm().clamp_min(1e-12))

    def noise(self, waveform: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        stage = self.settings.noise
        snr = torch.tensor([_uniform(stage.snr_db, gen)])
        noise = coloured_noise(waveform.numel(), _choice(stage.colors, gen), gen)
        return AF.add_noise(waveform[None], noise[None], snr)[0]

    def gain(self, waveform: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return waveform * 10 ** (_uniform(self.settings.gain.db, gen) / 20)

    @torch.no_grad()
    def __call__(self, waveform: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for name in STAGES:
            stage = getattr(self.settings, name)
            if stage is not None and self._applies(stage.prob, gen):
                waveform = getattr(self, name)(waveform, gen)
        return waveform
