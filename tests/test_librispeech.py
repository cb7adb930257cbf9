"""The LibriSpeech recipe on the real test-other subset in ../shared/data/LibriSpeech."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lhotse import CutSet

from conftest import LIBRISPEECH_DIR, REPO
from edge_conformer.data.audio import BadAudioError, read_audio
from edge_conformer.data.corpora.librispeech import prepare_librispeech, read_split
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.manifests import BadTranscriptError
from edge_conformer.data.storage import LogMelExtractor, shar_training_cuts

SPLIT = "test-other"
CHAPTER = LIBRISPEECH_DIR / SPLIT / "3005" / "163389"
# 12.8 minutes of audio: in the recipe's 30 buckets no bucket would fill one batch, and the
# training sampler (drop_last) would yield none.
FEW_BUCKETS = ["data.max_duration=60", "data.num_buckets=2"]


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (LIBRISPEECH_DIR / SPLIT).is_dir():
        pytest.fail(f"{LIBRISPEECH_DIR}/{SPLIT}: the LibriSpeech subset must lie in ../shared/data")
    return LIBRISPEECH_DIR


def _datamodule(*overrides: str):
    """The datamodule train.py would build with these overrides."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return instantiate(cfg.data, _convert_="all")


def _prepare(corpus: Path, out: Path, **kwargs) -> dict[str, Path]:
    return prepare_librispeech(corpus, out, [SPLIT], [SPLIT], [SPLIT], **kwargs)


def test_official_layout_reads_into_lowercase_utterances(corpus):
    utterances = read_split(corpus / SPLIT)
    assert len(utterances) == 100 and len({u.speaker for u in utterances}) == 10
    first = next(u for u in utterances if u.utt_id == "3005-163389-0001")
    assert first.text == "some sung out tear down the fence tear down the fence"
    assert first.audio_path == CHAPTER / "3005-163389-0001.flac" and first.speaker == "3005"


def test_prepare_writes_role_manifests_once(corpus, tmp_path):
    manifests = _prepare(corpus, tmp_path)
    assert set(manifests) == {SPLIT, "train", "dev"}
    cuts = CutSet.from_file(manifests["train"])
    assert len(cuts) == 100 and 700 < sum(c.duration for c in cuts) < 800
    assert all(c.sampling_rate == 16000 and c.supervisions[0].text.islower() for c in cuts)
    stamps = {name: path.stat().st_mtime_ns for name, path in manifests.items()}
    again = _prepare(corpus, tmp_path)
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == stamps


def _broken_copy(tmp_path: Path) -> Path:
    """One real chapter with four kinds of bad data."""
    chapter = tmp_path / "LibriSpeech" / SPLIT / "3005" / "163389"
    shutil.copytree(CHAPTER, chapter)
    (chapter / "3005-163389-0000.flac").write_bytes(b"")  # empty file
    (chapter / "3005-163389-0001.flac").write_bytes(b"fLaC not really")  # corrupt
    (chapter / "3005-163389-0002.flac").unlink()  # transcript line without audio
    shutil.copy(chapter / "3005-163389-0003.flac", chapter / "3005-163389-0099.flac")  # no text
    return tmp_path / "LibriSpeech"


def test_bad_files_are_counted_skips_or_errors_naming_the_file(tmp_path, caplog):
    corpus = _broken_copy(tmp_path)
    manifests = _prepare(corpus, tmp_path / "out", on_bad_data="skip")
    assert len(CutSet.from_file(manifests[SPLIT])) == 10 - 3
    assert "skipped 4 of 11 utterances" in caplog.text
    with pytest.raises((BadAudioError, BadTranscriptError), match=r"3005-163389-00\d\d"):
        _prepare(corpus, tmp_path / "strict", on_bad_data="error")


def test_missing_split_is_downloaded_only_when_asked(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        prepare_librispeech(corpus, tmp_path, ["train-clean-100"], [SPLIT], [SPLIT])


def test_any_lhotse_recipe_output_plugs_in_by_path(corpus, tmp_path):
    """lhotse's own LibriSpeech recipe writes recordings + supervisions manifests."""
    from lhotse.recipes import prepare_librispeech as lhotse_recipe

    lhotse_recipe(corpus, dataset_parts=[SPLIT], output_dir=tmp_path / "lhotse")
    recordings = tmp_path / "lhotse" / f"librispeech_recordings_{SPLIT}.jsonl.gz"
    ours = _prepare(corpus, tmp_path / "ours")[SPLIT]
    datamodule = _datamodule(
        "data=lhotse", f"data.data_dir={tmp_path / 'out'}", f"data.train_manifests=[{recordings}]",
        f"data.dev_manifests=[{ours}]", f"data.test_manifests={{other: [{recordings}]}}",
        "data.prepare.lowercase=true", "data.tokenizer.vocab_size=64",
    )
    datamodule.prepare_data()
    manifests = datamodule.manifests
    assert datamodule.test_splits == ["other"] and set(manifests) == {"train", "dev", "other"}
    train, dev = CutSet.from_file(manifests["train"]), CutSet.from_file(manifests["dev"])
    assert len(train) == len(dev) == 100
    texts = {c.supervisions[0].recording_id: c.supervisions[0].text for c in train}
    assert texts == {c.id: c.supervisions[0].text for c in dev}


def test_stored_features_are_the_loader_features(corpus):
    path = CHAPTER / "3005-163389-0002.flac"
    extractor = LogMelExtractor()
    stored = torch.from_numpy(extractor.extract(read_audio(path, 16000).numpy(), 16000))
    on_the_fly = LogMelFeatures()(read_audio(path, 16000))  # no generator: no dither
    assert stored.shape[0] == on_the_fly.shape[0] - 1
    torch.testing.assert_close(stored, on_the_fly[:-1])


@pytest.mark.slow
def test_precomputed_features_and_shar_shards_feed_the_loader(corpus, tmp_path):
    shar = tmp_path / "shar"
    datamodule = _datamodule(
        "data=librispeech", f"data.corpus_dir={corpus}", f"data.data_dir={tmp_path}",
        f"data.train_splits=[{SPLIT}]", f"data.dev_splits=[{SPLIT}]",
        f"data.test_splits=[{SPLIT}]", "data.tokenizer.vocab_size=64", "data.num_workers=0",
        "data.precompute_features=true", f"data.shar_dir={shar}", "data.shar_shard_size=40",
        *FEW_BUCKETS,
    )
    datamodule.prepare_data()
    assert all(c.has_features for c in CutSet.from_file(datamodule.manifests["dev"]))
    shar_ids = [c.id for c in shar_training_cuts(shar, seed=0).subset(first=100)]
    assert sorted(shar_ids) == sorted(c.id for c in CutSet.from_file(datamodule.manifests["train"]))
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["features"].shape[-1] == 80 and len(batch["ids"]) > 0


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_prepare_train_evaluate_export_on_real_librispeech(corpus, tmp_path):
    """prepare -> tokenizer -> a short training run -> evaluation -> export and parity."""
    data = [f"data.corpus_dir={corpus}", f"data.data_dir={tmp_path / 'data'}",
            f"data.train_splits=[{SPLIT}]", f"data.dev_splits=[{SPLIT}]",
            f"data.test_splits=[{SPLIT}]", "data.num_workers=0", *FEW_BUCKETS]
    prepared = _run([sys.executable, "recipes/librispeech/prepare.py", *data])
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "256 pieces" in prepared.stdout

    run_dir = tmp_path / "run"
    trained = _run([
        sys.executable, "train.py", "data=librispeech", *data, "model.d_model=32",
        "model.num_heads=2", "model.num_layers=2", "model.conv_kernel_size=7",
        "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ])
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["vocab_size"] == 256 and results["train_steps"] == 4
    assert results["test"][SPLIT]["utterances"] == 100 and results["test"][SPLIT]["wer"] > 0

    if not (REPO / "export.py").is_file():
        pytest.skip("export.py is not there yet: export and parity untested")
    export_dir = tmp_path / "export"
    exported = _run([sys.executable, "export.py", f"ckpt={run_dir}", f"out={export_dir}",
                     "export.executor=fp16", "export.max_utterances=10"])
    # A 4-step model may or may not pass the gate; either way the report must be complete.
    report_dir = export_dir if exported.returncode == 0 else Path(f"{export_dir}.rejected")
    assert (report_dir / "parity.json").is_file(), exported.stderr[-3000:]
    parity = json.loads((report_dir / "parity.json").read_text())
    assert parity["test_sets"][SPLIT]["utterances"] == 10
    assert parity["test_sets"][SPLIT]["nonfinite"] == 0

    compared = _run([sys.executable, "tools/compare_runs.py", str(run_dir), str(report_dir),
                     "--out", str(tmp_path)])
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert f"{parity['test_sets'][SPLIT]['wer_fp32']:.2f} / " in (
        tmp_path / "comparison.md").read_text()
