"""Bad data: a clear error naming the file, or a logged and counted skip that keeps the rest."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf

from edge_conformer.data.audio import BadAudioError, read_audio
from edge_conformer.data.dataset import AsrDataset
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.manifests import BadTranscriptError, Utterance, build_cuts
from edge_conformer.data.tokenizer import train_tokenizer


@pytest.fixture
def good_wav(fsdd_dir, tmp_path):
    path = tmp_path / "good.wav"
    shutil.copy(fsdd_dir / "recordings" / "5_lucas_9.wav", path)
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path, "file is empty"


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x01garbage that is not a wave header" * 20)
    return path, "unreadable audio"


def _zero_length(tmp_path):
    path = tmp_path / "zero_length.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    return path, "zero samples"


def _missing(tmp_path):
    return tmp_path / "missing.wav", "does not exist"


def _directory(tmp_path):
    path = tmp_path / "directory.wav"
    path.mkdir()
    return path, "not a regular file"


BAD_AUDIO = [_empty, _corrupt, _zero_length, _missing, _directory]


@pytest.mark.parametrize("make_bad", BAD_AUDIO, ids=lambda f: f.__name__.strip("_"))
def test_bad_audio_raises_an_error_naming_the_file(make_bad, tmp_path):
    path, problem = make_bad(tmp_path)
    with pytest.raises(BadAudioError, match=problem) as err:
        build_cuts([Utterance("bad", path, "one two")], on_bad_data="error")
    assert str(path) in str(err.value)
    with pytest.raises(BadAudioError, match=problem):
        read_audio(path, 16000)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_missing_transcript_raises_an_error_naming_the_file(good_wav, text):
    with pytest.raises(BadTranscriptError, match="missing or empty transcript") as err:
        build_cuts([Utterance("no-text", good_wav, text)], on_bad_data="error")
    assert str(good_wav) in str(err.value)


def test_skip_policy_logs_counts_and_keeps_every_good_utterance(good_wav, tmp_path, caplog):
    bad = [Utterance(f.__name__, f(tmp_path)[0], "one") for f in BAD_AUDIO]
    bad.append(Utterance("no-text", good_wav, None))
    good = [Utterance(f"good-{i}", good_wav, "five") for i in range(3)]
    with caplog.at_level(logging.WARNING):
        cuts = build_cuts(good[:1] + bad + good[1:], on_bad_data="skip")
    assert sorted(c.id for c in cuts) == ["good-0", "good-1", "good-2"]
    assert f"skipped {len(bad)} of {len(bad) + len(good)}" in caplog.text
    for utt in bad:
        assert str(utt.audio_path) in caplog.text


def test_all_bad_is_an_error_not_an_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="no usable utterances"):
        build_cuts([Utterance("e", _empty(tmp_path)[0], "one")], on_bad_data="skip")


def test_file_broken_after_preparation_is_skipped_at_load_time(good_wav, tmp_path, caplog):
    """A file that breaks between prepare and training: the batch goes on without it."""
    other = tmp_path / "other.wav"
    shutil.copy(good_wav, other)
    cuts = build_cuts([Utterance("a", good_wav, "five"), Utterance("b", other, "five")])
    other.write_bytes(b"overwritten by a failed copy")
    tokenizer = train_tokenizer(["five four three two one"] * 10, tmp_path / "t.model", 16)
    with caplog.at_level(logging.WARNING):
        batch = AsrDataset(LogMelFeatures(), tokenizer)[cuts]
    assert batch["ids"] == ["a"] and batch["skipped"] == 1
    assert str(other) in caplog.text
