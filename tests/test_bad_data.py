"""Bad data: a clear error naming the file, or a logged and counted skip that keeps the rest."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import soundfile as sf

from conftest import SMALL_DIGITS
from edge_conformer.data.audio import BadAudioError, read_audio
from edge_conformer.data.corpora.digits import prepare_digits, scan_takes
from edge_conformer.data.corpora.lhotse_manifests import checked_cuts, prepare_lhotse_manifests
from edge_conformer.data.corpora.prepared import STAMP_FILE, is_prepared, write_prepared
from edge_conformer.data.dataset import AsrDataset
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.manifests import BadTranscriptError, Utterance, build_cuts, load_cuts
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


# ---------------------------------------------------------------------------------------------
# Corpus preparation: bad takes, the "prepared" stamp, atomic writes (data/corpora/prepared.py)


def fsdd_copy(fsdd_dir, tmp_path, names):
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for name in names:
        shutil.copy(fsdd_dir / "recordings" / name, recordings / name)
    return tmp_path / "fsdd"


def test_unusable_fsdd_takes_are_skipped_by_name_and_all_bad_is_an_error(
    fsdd_dir, tmp_path, caplog
):
    names = ["5_lucas_9.wav", "3_theo_1.wav", "7_jackson_3.wav"]
    copy = fsdd_copy(fsdd_dir, tmp_path, names)
    corrupt = copy / "recordings" / names[1]
    corrupt.write_bytes(b"RIFF\x00\x01garbage" * 20)
    with caplog.at_level(logging.WARNING):
        takes = scan_takes(copy)
    assert sorted(t.path.name for t in takes) == sorted([names[0], names[2]])
    assert str(corrupt) in caplog.text and "skipped 1 of 3 FSDD recordings" in caplog.text
    for name in names:
        (copy / "recordings" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="no usable FSDD recordings"):
        scan_takes(copy)


def test_checked_cuts_stop_at_a_bad_cut_or_skip_it_by_name(good_wav, tmp_path, caplog):
    other = tmp_path / "other.wav"
    shutil.copy(good_wav, other)
    cuts = build_cuts([Utterance("a", good_wav, "five"), Utterance("b", other, "five")])
    other.write_bytes(b"")  # a cut manifest from elsewhere, whose audio broke since
    with pytest.raises(BadAudioError, match=str(other)):
        checked_cuts(cuts, on_bad_data="error")
    with caplog.at_level(logging.WARNING):
        kept = checked_cuts(cuts, on_bad_data="skip")
    assert [c.id for c in kept] == ["a"] and "skipped 1 of 2 cuts" in caplog.text


def mtimes(manifests):
    return {name: path.stat().st_mtime_ns for name, path in manifests.items()}


def test_a_prepared_manifest_is_reused_and_rewritten_only_when_its_settings_change(
    small_digits, tmp_path
):
    cuts = load_cuts(small_digits["dev"])
    manifest = tmp_path / "cuts_dev.jsonl.gz"
    write_prepared(cuts, manifest, {"seed": 0, "gap": (0.1, 0.2)})
    assert is_prepared(manifest, {"seed": 0, "gap": (0.1, 0.2)})  # as it reads back (lists)
    assert not is_prepared(manifest, {"seed": 1, "gap": (0.1, 0.2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuts_dev.jsonl.gz", "prepared.json"]
    assert len(load_cuts(manifest)) == len(cuts)  # no temporary file left, the manifest whole
    manifest.unlink()
    assert not is_prepared(manifest, {"seed": 0, "gap": (0.1, 0.2)})


def test_a_digits_corpus_is_reused_and_the_previous_stamp_rebuilds_once(fsdd_dir, tmp_path):
    settings = {**SMALL_DIGITS, "num_train": 8}
    manifests = prepare_digits(fsdd_dir, tmp_path, **settings)
    first = mtimes(manifests)
    assert mtimes(prepare_digits(fsdd_dir, tmp_path, **settings)) == first  # reused untouched
    # The previous scheme's stamp held the settings alone: that corpus is rebuilt, once.
    (tmp_path / STAMP_FILE).write_text(json.dumps({"seed": 0, "num_train": 8}))
    rebuilt = mtimes(prepare_digits(fsdd_dir, tmp_path, **settings))
    assert all(rebuilt[name] > first[name] for name in first)
    assert mtimes(prepare_digits(fsdd_dir, tmp_path, **settings)) == rebuilt


def test_lhotse_roles_are_rebuilt_only_when_their_own_inputs_change(small_digits, tmp_path):
    def prepare(test_manifest):
        return prepare_lhotse_manifests(
            tmp_path, [str(small_digits["dev"])], [str(small_digits["dev"])],
            {"other": [str(test_manifest)]},
        )

    first = mtimes(prepare(small_digits["test"]))
    assert mtimes(prepare(small_digits["test"])) == first
    again = mtimes(prepare(small_digits["unseen_speaker"]))
    assert again["train"] == first["train"] and again["dev"] == first["dev"]
    assert again["other"] > first["other"]
