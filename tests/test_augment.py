"""Waveform augmentation: reproducible per seed, each stage does what its knob says, the config
builds it, and stored features refuse it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from lhotse import CutSet
from omegaconf import OmegaConf

from conftest import REPO
from edge_conformer.config.entry import check_config
from edge_conformer.config.schemas import NOISE_COLORS, ConfigError
from edge_conformer.data.augment import (
    DECAY_60DB,
    AugmentSettings,
    EqSettings,
    GainSettings,
    NoiseSettings,
    ReverbSettings,
    SpeedSettings,
    WaveformAugment,
    coloured_noise,
    eq_curve_db,
    room_response,
)
from edge_conformer.data.augment import (
    NOISE_COLORS as AUGMENT_NOISE_COLORS,
)

pytestmark = pytest.mark.usefixtures("one_thread")
RATE = 8000


def digits_config(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def speechlike(seconds: float = 2.0) -> torch.Tensor:
    """A 200 Hz tone in bursts: level changes over time, as speech has."""
    t = torch.arange(int(seconds * RATE)) / RATE
    return 0.3 * torch.sin(2 * math.pi * 200 * t) * (torch.sin(2 * math.pi * 2 * t) > 0)


def only(**stage) -> WaveformAugment:
    return WaveformAugment(AugmentSettings(**stage), RATE)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_same_seed_draws_the_same_augmentation_and_another_seed_another():
    augment = WaveformAugment(AugmentSettings.from_config(
        {"speed": {"factors": [0.9, 1.1], "prob": 1.0}, "reverb": {"rt60": [0.2, 0.5],
         "drr_db": [0, 5], "prob": 1.0}, "noise": {"snr_db": [5, 20], "colors": ["pink"],
         "prob": 1.0}, "gain": {"db": [-6, 6], "prob": 1.0}}), RATE)
    wave = speechlike()
    first, again = augment(wave, gen(1)), augment(wave, gen(1))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(augment(wave, gen(2))[: len(first)], first[: len(first)])


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.2])
def test_speed_perturbation_changes_the_length_and_the_pitch_by_the_factor(factor):
    wave = speechlike()
    out = only(speed=SpeedSettings(factors=(factor,), prob=1.0))(wave, gen())
    assert abs(len(out) - len(wave) / factor) <= 1
    spectrum = torch.fft.rfft(out).abs()
    peak_hz = int(spectrum.argmax()) * RATE / len(out)
    assert peak_hz == pytest.approx(200 * factor, rel=0.01)


@pytest.mark.parametrize("color", NOISE_COLORS)
def test_noise_is_added_at_the_drawn_snr(color):
    wave = speechlike()
    out = only(noise=NoiseSettings(snr_db=(15.0, 15.0), colors=(color,), prob=1.0))(wave, gen())
    snr = 10 * torch.log10(wave.pow(2).sum() / (out - wave).pow(2).sum())
    assert float(snr) == pytest.approx(15.0, abs=0.01)


def test_coloured_noise_falls_by_its_slope():
    """Power per octave: white rises 3 dB per octave, pink is flat, brown falls 3 dB."""
    for color, rise_db in (("white", 3.0), ("pink", 0.0), ("brown", -3.0)):
        power = torch.fft.rfft(coloured_noise(2**16, color, gen())).abs().pow(2)
        low, high = power[256:512].sum(), power[512:1024].sum()  # two adjacent octaves
        assert float(10 * torch.log10(high / low)) == pytest.approx(rise_db, abs=0.6), color


def test_room_response_decays_60_db_by_rt60_with_the_drawn_direct_to_reverberant_ratio():
    rir = room_response(RATE, rt60=0.4, drr_db=6.0, gen=gen())
    assert rir[0] == 1 and len(rir) == int(0.4 * RATE)
    tail_energy = rir[1:].pow(2).sum()
    assert float(10 * torch.log10(1 / tail_energy)) == pytest.approx(6.0, abs=1e-3)
    # The envelope: energy of the last tenth vs the first tenth, as exp(-2 * DECAY * t / rt60).
    tenth = len(rir) // 10
    measured = 10 * torch.log10(rir[-tenth:].pow(2).sum() / rir[1:tenth + 1].pow(2).sum())
    assert float(measured) == pytest.approx(-20 * DECAY_60DB / math.log(10) * 0.9, abs=6)


def test_reverb_keeps_length_and_level_and_gain_scales_by_the_drawn_decibels():
    wave = speechlike()
    wet = only(reverb=ReverbSettings(rt60=(0.5, 0.5), drr_db=(0.0, 0.0), prob=1.0))(wave, gen())
    assert len(wet) == len(wave) and float(wet.norm()) == pytest.approx(float(wave.norm()))
    assert not torch.allclose(wet, wave, atol=1e-3)
    louder = only(gain=GainSettings(db=(6.0, 6.0), prob=1.0))(wave, gen())
    torch.testing.assert_close(louder, wave * 10 ** (6 / 20))


def test_the_equaliser_colours_the_spectrum_by_its_drawn_curve_and_keeps_the_level():
    settings = EqSettings(db=6.0, bands=3, prob=1.0)
    noise = torch.randn(2**15, generator=gen(5))
    out = only(eq=settings)(noise, gen(0))
    assert len(out) == len(noise) and float(out.norm()) == pytest.approx(float(noise.norm()))
    # The curve the stage drew: the same generator after the stage's "does it apply" draw.
    replay = gen(0)
    torch.rand((), generator=replay)
    bins = len(noise) // 2 + 1
    curve = eq_curve_db(bins, settings, replay)
    power = torch.fft.rfft(out).abs().pow(2) / torch.fft.rfft(noise).abs().pow(2)
    gain_db = 10 * torch.log10(power)
    # Averaged over 64 bands (each a 64th of the band); up to the level offset, they follow it.
    measured = gain_db[: bins - 1].reshape(64, -1).mean(1)
    expected = curve[: bins - 1].reshape(64, -1).mean(1)
    offset = (measured - expected).mean()
    assert float((measured - expected - offset).abs().max()) < 0.5
    assert float(expected.max() - expected.min()) > 3  # the draw coloured something


def test_a_stage_with_probability_zero_leaves_the_audio_alone():
    wave = speechlike()
    never = only(noise=NoiseSettings(prob=0.0), gain=GainSettings(prob=0.0))
    torch.testing.assert_close(never(wave, gen()), wave, rtol=0, atol=0)
    assert AugmentSettings.from_config({"noise": None, "gain": {"db": [0, 1], "prob": 0}}) is None
    # A stage at prob 0 takes no draws: the others augment exactly as without it.
    stages = {"noise": {"snr_db": [5, 20], "colors": ["pink"], "prob": 0.7},
              "gain": {"db": [-6, 6], "prob": 0.5}}
    without = WaveformAugment(AugmentSettings.from_config(stages), RATE)
    at_zero = WaveformAugment(AugmentSettings.from_config(
        {**stages, "eq": {"db": 5.0, "bands": 4, "prob": 0.0}}), RATE)
    for seed in range(5):
        torch.testing.assert_close(at_zero(wave, gen(seed)), without(wave, gen(seed)),
                                   rtol=0, atol=0)


def test_the_digits_config_turns_its_stages_on_and_null_turns_all_off():
    cfg = digits_config()
    check_config(cfg)
    settings = AugmentSettings.from_config(OmegaConf.to_container(cfg.data.augment))
    assert None not in (settings.speed, settings.eq, settings.reverb, settings.noise, settings.gain)
    offline = digits_config("data.augment.eq.prob=0").data.augment  # make demo-offline's
    assert AugmentSettings.from_config(OmegaConf.to_container(offline)).eq is None
    assert digits_config("data.augment=null").data.augment is None
    assert digits_config("data=librispeech").data.augment is None
    assert set(NOISE_COLORS) == set(AUGMENT_NOISE_COLORS)


@pytest.mark.parametrize(("override", "names"), [
    ("data.precompute_features=true", "data.augment=null or data.precompute_features=false"),
    ("data.augment.noise.colors=[blue]", "colors='blue' is not one of: white, pink, brown"),
    ("data.augment.speed.prob=2", "prob=2.0 must lie in [0, 1]"),
    ("data.augment.reverb.rt60=[0.5,0.1]", "rt60=[0.5, 0.1] must be [low, high]"),
    ("data.augment.eq.bands=0", "bands=0 must be >= 1"),
])
def test_a_bad_augmentation_knob_is_refused_naming_it(override, names):
    with pytest.raises(ConfigError, match=names.replace("[", r"\[")):
        check_config(digits_config(override))


def test_the_training_dataset_augments_reproducibly_and_evaluation_does_not(small_digits):
    from edge_conformer.data.dataset import AsrDataset
    from edge_conformer.data.features import FeatureSettings, LogMelFeatures

    cuts = CutSet.from_file(small_digits["dev"]).subset(first=2)
    augment = only(speed=SpeedSettings(factors=(1.2,), prob=1.0))
    front_end = LogMelFeatures(FeatureSettings(sample_rate=RATE, n_fft=256, dither=0.0))
    tokenizer = SimpleNamespace(encode=lambda text: [1] * len(text.split()))  # all it uses
    plain = AsrDataset(front_end, tokenizer)[cuts]
    augmented = AsrDataset(front_end, tokenizer, augment=augment)[cuts]
    torch.testing.assert_close(augmented["features"],
                               AsrDataset(front_end, tokenizer, augment=augment)[cuts]["features"])
    # 1.2x faster: about 1/1.2 of the frames.
    ratio = augmented["feature_lengths"].float() / plain["feature_lengths"].float()
    assert torch.allclose(ratio, torch.full_like(ratio, 1 / 1.2), atol=0.02)
