"""The streamable front end on real speech: global feature statistics (measured, cached, carried
by checkpoints and frontend.json) and the streaming log-mel that equals the offline one."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FSDD_DIR, LIBRISPEECH_DIR, REPO, small_digits_overrides
from edge_conformer.data.audio import read_audio
from edge_conformer.data.dataset import load_cut_audio
from edge_conformer.data.feature_stats import training_feature_stats
from edge_conformer.data.features import (
    STD_GUARD,
    FeatureSettings,
    FeatureStats,
    LogMelFeatures,
)
from edge_conformer.data.manifests import load_cuts
from edge_conformer.data.tokenizer import train_tokenizer
from edge_conformer.runtime.bundle import frontend_description, load_bundle, write_frontend
from edge_conformer.runtime.checkpoint import TOKENIZER_FILE, load_checkpoint
from edge_conformer.runtime.frontend import StreamingLogMel
from edge_conformer.runtime.windowing import WindowSpec

LIBRISPEECH_FLAC = LIBRISPEECH_DIR / "test-other" / "3005" / "163389" / "3005-163389-0002.flac"


def recipe_settings(data_config: str, **changes) -> FeatureSettings:
    """The feature settings a recipe's data config holds (conf/data/...), with `changes`."""
    configured = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / data_config))
    return replace(FeatureSettings(**configured["features"]), **changes)


def stream_in_random_pieces(
    streaming: StreamingLogMel, waveform: torch.Tensor, rng: random.Random
) -> torch.Tensor:
    """The stream's frames, fed `waveform` in pieces of 10 ms to 1 s."""
    rate = streaming.features.sample_rate
    frames, start = [], 0
    while start < len(waveform):
        size = rng.randint(rate // 100, rate)
        frames.append(streaming.accept(waveform[start:start + size]))
        start += size
    frames.append(streaming.flush())
    return torch.cat(frames)


def assert_streams_like_offline(features: LogMelFeatures, waveforms, seed: int = 0) -> None:
    streaming = StreamingLogMel(features)  # one object: flush starts the next stream
    rng = random.Random(seed)
    for waveform in waveforms:
        offline = features(waveform)  # no generator: no dither
        streamed = stream_in_random_pieces(streaming, waveform, rng)
        assert streamed.shape == offline.shape
        torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def digits_stats(small_digits, tmp_path_factory) -> FeatureStats:
    """Global statistics of (part of) the small digits training split at the digits recipe's
    settings."""
    data_dir = tmp_path_factory.mktemp("digits_stats")
    train = data_dir / "train.jsonl.gz"
    load_cuts(small_digits["train"]).subset(first=16).to_file(train)
    return training_feature_stats(train, recipe_settings("digits.yaml", normalize="global"),
                                  data_dir)


def fsdd_waveforms(count: int, sample_rate: int) -> list[torch.Tensor]:
    paths = sorted((FSDD_DIR / "recordings").glob("*.wav"))
    return [read_audio(p, sample_rate) for p in random.Random(1).sample(paths, count)]


@pytest.mark.parametrize("normalize", ["global", "running", "none"])
def test_streamed_fsdd_digits_equal_offline_features(normalize, digits_stats):
    settings = recipe_settings("digits.yaml", normalize=normalize)
    features = LogMelFeatures(settings, digits_stats if normalize != "none" else None)
    assert_streams_like_offline(features, fsdd_waveforms(8, settings.sample_rate))


@pytest.mark.parametrize("normalize", ["global", "running", "none"])
def test_streamed_librispeech_equals_offline_features(normalize):
    settings = recipe_settings("common/asr_16k.yaml", normalize=normalize)
    waveform = read_audio(LIBRISPEECH_FLAC, settings.sample_rate)
    # Plausible statistics of real 16 kHz speech: another utterance's own.
    other = read_audio(LIBRISPEECH_FLAC.with_name("3005-163389-0005.flac"), settings.sample_rate)
    log_mel = LogMelFeatures(replace(settings, normalize="none")).log_mel(other)
    stats = FeatureStats(log_mel.mean(0).tolist(), log_mel.std(0).tolist())
    features = LogMelFeatures(settings, stats if normalize != "none" else None)
    assert_streams_like_offline(features, [waveform, waveform[: len(waveform) // 3]], seed=2)


def test_frames_come_as_soon_as_their_windowed_samples_are_in():
    """Fed sample by sample, frame t arrives with sample t * hop + lookahead_samples, and
    that is the first moment it can: the offline frame changes with the sample before, not
    with the one after."""
    settings = recipe_settings("digits.yaml", normalize="none")
    features = LogMelFeatures(settings)
    streaming = StreamingLogMel(features)
    waveform = fsdd_waveforms(1, settings.sample_rate)[0]
    hop, lookahead = settings.hop_length, streaming.lookahead_samples
    arrived_at = {}  # frame -> number of samples in when it was emitted
    for n in range(len(waveform)):
        for _ in range(streaming.accept(waveform[n:n + 1]).shape[0]):
            arrived_at[len(arrived_at)] = n + 1
    streaming.flush()
    # Frame 0 also waits for the sample its reflect padding mirrors into its first windowed one.
    assert arrived_at[0] == lookahead + 1
    offline = features(waveform)
    for t in (1, 5, len(arrived_at) - 2):
        assert arrived_at[t] == t * hop + lookahead
        last_needed = waveform.clone()
        last_needed[t * hop + lookahead - 1] += 0.1
        assert not torch.equal(features(last_needed)[t], offline[t])
        not_needed = waveform.clone()
        not_needed[t * hop + lookahead] += 0.1
        assert torch.equal(features(not_needed)[t], offline[t])
    assert lookahead == settings.win_length // 2  # the window's right half, not n_fft / 2
    assert streaming.frames_per_second == 100


def test_a_long_stream_keeps_only_the_samples_it_still_needs():
    settings = recipe_settings("common/asr_16k.yaml", normalize="none")
    streaming = StreamingLogMel(LogMelFeatures(settings))
    waveform = read_audio(LIBRISPEECH_FLAC, settings.sample_rate)
    piece = settings.sample_rate // 10
    for _ in range(3):  # about 30 s of speech
        for start in range(0, len(waveform), piece):
            streaming.accept(waveform[start:start + piece])
            # A frame not yet emitted lies within a hop of the received end; its span is n_fft.
            assert len(streaming._signal) <= settings.n_fft + settings.hop_length
    last = streaming.flush()
    assert 0 < last.shape[0] <= streaming.lookahead_samples // settings.hop_length + 1


def test_streaming_refuses_utterance_normalisation_and_too_short_streams():
    with pytest.raises(ValueError, match="normalize=utterance.*cannot stream"):
        StreamingLogMel(LogMelFeatures(FeatureSettings(normalize="utterance")))
    streaming = StreamingLogMel(LogMelFeatures(FeatureSettings(normalize="none")))
    streaming.accept(torch.ones(100))
    with pytest.raises(ValueError, match="too short"):
        streaming.flush()
    with pytest.raises(ValueError, match=r"mono samples \(n,\)"):
        streaming.accept(torch.ones(2, 100))


def test_global_statistics_are_the_training_splits_and_cached(small_digits, tmp_path):
    settings = recipe_settings("digits.yaml", normalize="global")
    train = tmp_path / "train.jsonl.gz"
    load_cuts(small_digits["train"]).subset(first=8).to_file(train)
    stats = training_feature_stats(train, settings, tmp_path)
    raw = LogMelFeatures(replace(settings, normalize="none"))
    every_frame = torch.cat([raw.log_mel(load_cut_audio(cut, settings.sample_rate))
                             for cut in load_cuts(train)])
    every_frame = every_frame.double()
    torch.testing.assert_close(torch.tensor(stats.mean, dtype=torch.float64), every_frame.mean(0))
    torch.testing.assert_close(torch.tensor(stats.std, dtype=torch.float64),
                               every_frame.std(0, correction=0))

    (cache,) = tmp_path.glob("feature_stats-*.json")
    recorded = json.loads(cache.read_text())
    recorded["mean"][0] += 1.0  # a cached value, not a re-measured one, must come back
    cache.write_text(json.dumps(recorded))
    assert training_feature_stats(train, settings, tmp_path).mean[0] == \
        pytest.approx(stats.mean[0] + 1.0)
    # Neither dither nor the normalisation mode change what is measured; the settings and
    # the manifest's content do.
    training_feature_stats(train, replace(settings, dither=0.0, normalize="none"), tmp_path)
    assert len(list(tmp_path.glob("feature_stats-*.json"))) == 1
    training_feature_stats(train, replace(settings, n_mels=40), tmp_path)
    load_cuts(small_digits["train"]).subset(first=4).to_file(train)
    fewer = training_feature_stats(train, settings, tmp_path)
    assert len(list(tmp_path.glob("feature_stats-*.json"))) == 3 and fewer != stats


def test_global_normalisation_uses_the_statistics_through_checkpoint_and_frontend_json(
    digits_stats, tmp_path
):
    settings = recipe_settings("digits.yaml", normalize="global")
    features = LogMelFeatures(settings, digits_stats)
    waveform = fsdd_waveforms(1, settings.sample_rate)[0]
    log_mel = LogMelFeatures(replace(settings, normalize="none"))(waveform)
    expected = (log_mel - torch.tensor(digits_stats.mean)) / (
        torch.tensor(digits_stats.std) + STD_GUARD)
    torch.testing.assert_close(features(waveform), expected)

    # What lit_module.py saves and runtime/checkpoint.py reads back, through torch.save.
    torch.save({"edge_conformer": {"config": {"data": {"features": asdict(settings)}},
                                   "feature_stats": asdict(features.stats)}}, tmp_path / "c.ckpt")
    extras = torch.load(tmp_path / "c.ckpt", weights_only=False)["edge_conformer"]
    from_checkpoint = LogMelFeatures.from_saved(
        extras["config"]["data"]["features"], extras["feature_stats"])
    assert torch.equal(from_checkpoint(waveform), features(waveform))

    window = WindowSpec.from_seconds(2.0, 0.5, settings.frames_per_second)
    write_frontend(tmp_path, frontend_description(from_checkpoint, window, vocab_size=16))
    train_tokenizer(["one two three", "four five six"], tmp_path / TOKENIZER_FILE, 16)
    bundle = load_bundle(tmp_path)
    assert bundle.features.settings == settings and bundle.features.stats == features.stats
    assert torch.equal(bundle.features(waveform), features(waveform))


def test_running_normalisation_starts_from_the_training_statistics_and_adapts(digits_stats):
    settings = recipe_settings("digits.yaml", normalize="running", running_prior_frames=50)
    running = LogMelFeatures(settings, digits_stats)
    log_mel = LogMelFeatures(replace(settings, normalize="none"))(fsdd_waveforms(1, 8000)[0])
    # Frame 0: the training split's statistics weigh 50 frames, the frame itself one.
    mean, std = torch.tensor(digits_stats.mean).double(), torch.tensor(digits_stats.std).double()
    first = log_mel[0].double()
    blended_mean = (50 * mean + first) / 51
    blended_std = ((50 * (std**2 + mean**2) + first**2) / 51 - blended_mean**2).sqrt()
    torch.testing.assert_close(running.normalize(log_mel)[0],
                               ((first - blended_mean) / (blended_std + STD_GUARD)).float())
    # A channel that adds 3 nats to every bin (another microphone, another level): global
    # statistics pass the offset on to the model, the running ones remove most of it by the
    # end of a long utterance (here the recording ten times over, ~5 s).
    long = log_mel.repeat(10, 1)
    global_features = LogMelFeatures(replace(settings, normalize="global"), digits_stats)
    end = slice(-len(log_mel), None)
    global_shift = (global_features.normalize(long + 3) - global_features.normalize(long))[end]
    running_shift = (running.normalize(long + 3) - running.normalize(long))[end]
    assert running_shift.abs().mean() < 0.25 * global_shift.abs().mean()
    # Each call without moments is a new utterance: the same frames give the same features.
    torch.testing.assert_close(running.normalize(log_mel), running.normalize(log_mel))


def test_feature_settings_load_old_configs_and_name_the_knob():
    before_normalize = {"sample_rate": 8000, "n_mels": 80, "n_fft": 256, "win_length_ms": 25,
                        "hop_length_ms": 10}
    features = LogMelFeatures.from_saved(before_normalize)
    assert features.settings.normalize == "utterance" and features.stats is None
    assert features.settings.hop_length == 80 and features.settings.win_length == 200
    waveform = fsdd_waveforms(1, 8000)[0]
    assert features(waveform).shape == (features.settings.num_frames(len(waveform)), 80)
    with pytest.raises(ValueError, match="data.features.normalize=global needs"):
        LogMelFeatures(FeatureSettings(normalize="global"))
    with pytest.raises(ValueError, match="data.features.normalize must be one of"):
        FeatureSettings(normalize="per_feature")
    with pytest.raises(ValueError, match="data.features.n_mels=80"):
        LogMelFeatures(FeatureSettings(normalize="global"), FeatureStats([0.0] * 40, [1.0] * 40))
    with pytest.raises(ValueError, match="data.features.normalize=running needs"):
        LogMelFeatures(FeatureSettings(normalize="running"))
    with pytest.raises(ValueError, match="data.features.running_prior_frames must be >= 1"):
        FeatureSettings(normalize="running", running_prior_frames=0)


@pytest.mark.slow
@pytest.mark.parametrize("normalize", ["global", "running"])
def test_training_with_training_statistics_carries_them(normalize, tmp_path):
    """train.py measures the statistics into data_dir; its checkpoint loads with them."""
    from test_training import run_train

    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    run_train(*small_digits_overrides(data_dir), f"data.features.normalize={normalize}",
              "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=csv",
              f"hydra.run.dir={run_dir}")
    (cache,) = data_dir.glob("feature_stats-*.json")
    measured = json.loads(cache.read_text())
    loaded = load_checkpoint(run_dir, tokenizer_dir=tmp_path / "tokenizer")
    torch.testing.assert_close(loaded.features.mean, torch.tensor(measured["mean"]))
    torch.testing.assert_close(loaded.features.std, torch.tensor(measured["std"]))
    assert Path(loaded.path).is_file() and loaded.features.settings.normalize == normalize
