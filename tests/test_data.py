"""The data pipeline on real audio: digits corpus, features, resampling, tokenizer."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet

from edge_conformer.data.audio import read_audio
from edge_conformer.data.corpora.digits import (
    DIGIT_WORDS,
    DigitsSplitSpec,
    plan_split,
    scan_takes,
)
from edge_conformer.data.dataset import AsrDataset, load_cut_audio
from edge_conformer.data.features import FeatureSettings, FeatureStats, LogMelFeatures, SpecAugment
from edge_conformer.data.manifests import Utterance, build_cuts, cut_text, load_cuts
from edge_conformer.data.storage import precompute_features
from edge_conformer.data.tokenizer import train_tokenizer


def _takes_of(cuts_path) -> list[str]:
    return [c.supervisions[0].speaker for c in CutSet.from_file(cuts_path)]


def test_digits_splits_hold_out_one_speaker(small_digits):
    train_speakers = set(_takes_of(small_digits["train"]))
    assert "theo" not in train_speakers and len(train_speakers) == 5
    assert set(_takes_of(small_digits["unseen_speaker"])) == {"theo"}
    assert set(_takes_of(small_digits["test"])) == train_speakers


def test_digits_utterances_are_real_connected_digits(small_digits):
    cuts = CutSet.from_file(small_digits["train"])
    for cut in cuts:
        words = cut_text(cut).split()
        assert 2 <= len(words) <= 4 and set(words) <= set(DIGIT_WORDS)
        assert cut.sampling_rate == 8000 and cut.duration > 0.3 * len(words)
    audio = cuts[0].load_audio()
    assert np.abs(audio).max() > 0.05  # real speech, not silence


def test_each_digit_word_is_aligned_to_its_take_in_the_spliced_audio(small_digits, fsdd_dir):
    """A word's span holds exactly one of its speaker's FSDD takes of that digit; outside the
    spans there are only the spliced silences."""
    for cut in CutSet.from_file(small_digits["test"]).subset(first=3):
        audio = cut.load_audio()[0]
        supervision = cut.supervisions[0]
        words = supervision.alignment["word"]
        assert " ".join(w.symbol for w in words) == supervision.text
        inside = np.zeros(len(audio), dtype=bool)
        for word in words:
            first = round(word.start * 8000)
            span = audio[first:first + round(word.duration * 8000)]
            digit = DIGIT_WORDS.index(word.symbol)
            takes = (fsdd_dir / "recordings").glob(f"{digit}_{supervision.speaker}_*.wav")
            assert any(np.array_equal(sf.read(str(t), dtype="float32")[0], span) for t in takes)
            inside[first:first + len(span)] = True
        assert not audio[~inside].any()


def test_test_split_uses_only_fsdd_test_takes(fsdd_dir):
    """Takes index 0-4 are FSDD's own test split: `test` uses only them, `train` never."""
    takes = scan_takes(fsdd_dir)
    seen = ("george", "jackson")
    test_plan = plan_split(DigitsSplitSpec("test", 50, seen, tuple(range(5))), takes,
                           random.Random(0), 2, 8)
    train_plan = plan_split(DigitsSplitSpec("train", 50, seen, tuple(range(5, 50))), takes,
                            random.Random(0), 2, 8)
    assert all(t.index < 5 and t.speaker in seen for utt in test_plan for t in utt)
    assert all(t.index >= 5 for utt in train_plan for t in utt)
    assert all(len({t.speaker for t in utt}) == 1 for utt in test_plan + train_plan)


def test_features_are_80_bin_log_mel_at_10ms(fsdd_dir):
    features = LogMelFeatures()
    waveform = read_audio(fsdd_dir / "recordings" / "3_jackson_0.wav", 16000)
    feats = features(waveform)
    assert feats.shape == (features.settings.num_frames(len(waveform)), 80)
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(feats.mean(0), torch.zeros(80), atol=1e-4, rtol=0)


def test_stored_features_are_normalised_by_the_global_statistics(small_digits, tmp_path):
    """Stored features are the loader's, global normalisation included, and their manifest's
    name changes with the statistics (other statistics: other features)."""
    dev = tmp_path / "cuts_dev.jsonl.gz"
    load_cuts(small_digits["dev"]).subset(first=3).to_file(dev)
    settings = FeatureSettings(sample_rate=8000, n_fft=256, normalize="global")
    stats = FeatureStats(mean=torch.linspace(-9, -4, 80).tolist(), std=[2.5] * 80)
    front_end = LogMelFeatures(settings, stats)
    stored = precompute_features(dev, front_end, tmp_path / "features")
    for cut in load_cuts(stored):
        features = torch.from_numpy(cut.load_features())
        expected = front_end(load_cut_audio(cut, settings.sample_rate))  # no dither
        torch.testing.assert_close(features, expected[: features.shape[0]])
    other_stats = FeatureStats(mean=stats.mean, std=[3.0] * 80)
    assert precompute_features(dev, LogMelFeatures(settings, other_stats), tmp_path) != stored


def test_other_rates_are_resampled_and_stereo_down_mixed(fsdd_dir, tmp_path):
    mono, rate = sf.read(fsdd_dir / "recordings" / "7_nicolas_3.wav", dtype="float32")
    stereo_path = tmp_path / "stereo_44k.wav"
    # Same speech at 44.1 kHz, in two channels of which one is silent.
    import torchaudio.functional as AF

    upsampled = AF.resample(torch.from_numpy(mono), rate, 44100).numpy()
    sf.write(stereo_path, np.stack([upsampled, np.zeros_like(upsampled)], 1), 44100)
    cuts = build_cuts([Utterance("stereo", stereo_path, "seven")])
    waveform = load_cut_audio(cuts[0], 16000)
    reference = AF.resample(torch.from_numpy(mono), rate, 16000) / 2  # mean of the channels
    assert waveform.dim() == 1 and abs(len(waveform) - len(reference)) <= 2
    n = min(len(waveform), len(reference))
    assert torch.corrcoef(torch.stack([waveform[:n], reference[:n]]))[0, 1] > 0.99


def test_spec_augment_is_reproducible_per_batch():
    feats = torch.randn(300, 80)
    augment = SpecAugment()
    first = augment(feats, torch.Generator().manual_seed(1))
    again = augment(feats, torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    assert (first == 0).any() and not (feats == 0).any()


def test_dataset_batches_real_digits(small_digits, tmp_path):
    cuts = CutSet.from_file(small_digits["dev"])
    tokenizer = train_tokenizer([cut_text(c) for c in cuts], tmp_path / "tok.model", 32)
    batch = AsrDataset(LogMelFeatures(), tokenizer, SpecAugment())[cuts]
    assert batch["features"].shape[0] == len(cuts) == len(batch["texts"])
    assert batch["features"].shape[2] == 80 and batch["skipped"] == 0
    for text, targets, n in zip(batch["texts"], batch["targets"], batch["target_lengths"]):
        assert (targets[:n] >= 1).all() and (targets[n:] == 0).all()  # 0 = blank, padding only
        assert tokenizer.decode((targets[:n] - 1).tolist()) == text


def _batch_ids(batches) -> list[list[str]]:
    return [[cut.id for cut in batch] for batch in batches]


def _training_sampler(manifest, num_buckets: int, max_duration: float = 10):
    from lhotse.dataset import DynamicBucketingSampler

    from edge_conformer.data.datamodule import ResumableSampler
    from edge_conformer.data.manifests import load_cuts

    lhotse_sampler = DynamicBucketingSampler(
        load_cuts(manifest), max_duration=max_duration, num_buckets=num_buckets, shuffle=True,
        drop_last=True, seed=0,
    )
    # The sampler only tells the dataset the epoch (it seeds SpecAugment per epoch).
    return ResumableSampler(lhotse_sampler, SimpleNamespace(epoch=0), str(manifest))


def test_resumed_sampler_continues_the_epoch_where_it_stopped(small_digits):
    """The resumed epoch yields exactly the uninterrupted epoch's batches after the first k.

    Regression: a lhotse sampler is its own iterator, and iterating it again after skipping
    (`yield from`) silently restarted the epoch from its first batch.
    """
    def sampler():
        return _training_sampler(small_digits["train"], num_buckets=2)

    uninterrupted = sampler()
    uninterrupted.set_epoch(1)
    epoch = _batch_ids(uninterrupted)
    assert len(epoch) >= 4

    resumed = sampler()
    resumed.resume_at(epoch=1, batches_done=3)
    assert _batch_ids(resumed) == epoch[3:]
    resumed.set_epoch(2)  # later epochs start from their first batch
    uninterrupted.set_epoch(2)
    assert _batch_ids(resumed) == _batch_ids(uninterrupted)


def test_an_epoch_without_batches_is_an_error_naming_the_manifest(small_digits):
    """48 short utterances in 10 buckets: no bucket fills a 20 s batch, drop_last drops them all,
    and Lightning would otherwise loop over empty epochs forever."""
    sampler = _training_sampler(small_digits["train"], num_buckets=10, max_duration=20)
    with pytest.raises(ValueError, match="no training batch") as error:
        list(sampler)
    assert str(small_digits["train"]) in str(error.value)
