"""The digits recipe's new_voices split: eSpeak NG voices of both sexes, reproducible, aligned,
drawn apart from the FSDD splits, and skipped in one plain line where no synthesiser exists.
Not skipped where the synthesiser is missing: pyproject.toml installs it (espeakng-loader)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_DIGITS
from edge_conformer.data.corpora import voices
from edge_conformer.data.corpora.digits import FSDD_SAMPLE_RATE, prepare_digits
from edge_conformer.data.manifests import load_cuts

NUM_NEW_VOICES = 6

def wav_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(directory.glob("*.wav"))}


@pytest.fixture(scope="module")
def with_new_voices(fsdd_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("new_voices")
    return prepare_digits(fsdd_dir, out, **{**SMALL_DIGITS, "num_new_voices": NUM_NEW_VOICES})


def test_new_voices_are_spoken_by_women_and_men_at_fsdd_rate(with_new_voices):
    cuts = load_cuts(with_new_voices["new_voices"])
    assert len(cuts) == NUM_NEW_VOICES
    speakers = [cut.supervisions[0].speaker for cut in cuts]
    assert {"+f" in s for s in speakers} == {True, False}  # both sexes' variants
    assert len(set(speakers)) == NUM_NEW_VOICES  # pitch and rate drawn per utterance
    for cut in cuts:
        audio = cut.load_audio()[0]
        assert cut.sampling_rate == FSDD_SAMPLE_RATE and np.abs(audio).max() > 0.05


def test_new_voices_are_reproducible_and_leave_the_fsdd_splits_as_they_were(
    with_new_voices, small_digits, fsdd_dir, tmp_path
):
    again = prepare_digits(fsdd_dir, tmp_path, **{**SMALL_DIGITS,
                                                  "num_new_voices": NUM_NEW_VOICES})
    for name in ("train", "test", "unseen_speaker", "new_voices"):
        assert wav_hashes(again[name].parent / name) == wav_hashes(
            with_new_voices[name].parent / name), name
    # The session's corpus was prepared without new_voices: its FSDD audio is the same.
    for name in ("train", "dev", "test", "unseen_speaker"):
        assert wav_hashes(small_digits[name].parent / name) == wav_hashes(
            with_new_voices[name].parent / name), name


def test_each_word_is_aligned_to_its_synthesised_digit(with_new_voices):
    for cut in load_cuts(with_new_voices["new_voices"]):
        audio = cut.load_audio()[0]
        words = cut.supervisions[0].alignment["word"]
        assert " ".join(w.symbol for w in words) == cut.supervisions[0].text
        inside = np.zeros(len(audio), dtype=bool)
        for word in words:
            first = round(word.start * FSDD_SAMPLE_RATE)
            last = first + round(word.duration * FSDD_SAMPLE_RATE)
            assert np.abs(audio[first:last]).max() > 0.05  # the digit is spoken there
            inside[first:last] = True
        assert not audio[~inside].any()  # elsewhere only the spliced silences


def test_without_a_synthesiser_the_split_is_skipped_in_one_line(
    fsdd_dir, tmp_path, monkeypatch, caplog
):
    from edge_conformer.data.datamodule import SpeechDataModule

    monkeypatch.setattr(voices, "synthesizer", lambda: None)
    settings = {**SMALL_DIGITS, "num_new_voices": NUM_NEW_VOICES}
    with caplog.at_level(logging.WARNING):
        manifests = prepare_digits(fsdd_dir, tmp_path, **settings)
    assert "new_voices" not in manifests and not (tmp_path / "new_voices").exists()
    skipped = [r.getMessage() for r in caplog.records if "new_voices" in r.getMessage()]
    assert skipped == [f"digits new_voices: skipped, no speech synthesiser installed "
                       f"({voices.HOW_TO_GET})"]
    datamodule = SpeechDataModule(
        name="digits", prepare=lambda out_dir: manifests, data_dir=str(tmp_path),
        train_split="train", dev_split="dev", test_splits=["test", "new_voices"],
        tokenizer={"vocab_size": 32, "model_type": "unigram"},
        features={"sample_rate": FSDD_SAMPLE_RATE, "n_fft": 256}, spec_augment=None,
        max_duration=20,
    )
    datamodule.prepare_data()
    assert datamodule.test_splits == ["test"]

