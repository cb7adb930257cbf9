"""export.py end to end on a tiny trained digits model: parity gate, publishing, W&B, stress."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, TEST_EXPORT, run_export
from edge_conformer.config.schemas import ConfigError
from edge_conformer.data.corpora.digits import DIGIT_WORDS
from edge_conformer.decode.beam import decode_settings
from edge_conformer.decode.lexicon import lexicon_from_texts, write_lexicon
from edge_conformer.export import pipeline
from edge_conformer.export.pipeline import ExportSettings, export_checkpoint
from edge_conformer.export.publish import EXPORT_MARKER
from edge_conformer.records import ExportReport
from edge_conformer.runtime.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

EXPORT_FILES = {"model.mlpackage", "tokenizer.model", "frontend.json", "parity.json", "parity.md",
                EXPORT_MARKER}


def settings(**overrides) -> ExportSettings:
    """conf/export/default.yaml with the test settings and `overrides`, as export.py reads it."""
    defaults = OmegaConf.load(REPO / "conf" / "export" / "default.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExportSettings), defaults,
                                               TEST_EXPORT, overrides))


def assert_parity_holds(report: ExportReport) -> None:
    assert report.passed and not report.reasons
    assert report.thresholds.min_identical == TEST_EXPORT["min_identical"]
    for result in report.windowed.test_sets.values():
        assert result.utterances == 8 and result.nonfinite == 0
        assert result.identical >= TEST_EXPORT["min_identical"]
        assert result.logits_psnr_db >= 60  # FP16 rounding alone: about 70 dB here


def no_staging_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".staging-" in p.name or ".replaced-" in p.name]


def test_export_publishes_a_package_that_passes_parity(digits_export) -> None:
    done, out = digits_export
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    # The package holds Core ML's files only: no debugger file beside them (convert.py).
    assert {p.name for p in (out / "model.mlpackage").iterdir()} == {"Manifest.json", "Data"}
    report = ExportReport.read(out / "parity.json")
    assert report.executor == "fp16-strict" and report.prenormalizer == "mad"
    assert_parity_holds(report)
    assert report.streaming is None  # an offline model: no streaming package (auto)
    # The model emits words (not only blanks), so identical transcripts mean something.
    assert min(r.wer_fp32 for r in report.windowed.test_sets.values()) < 100
    assert report.ops["einsum"] > 0 and report.package_bytes > 0
    frontend = json.loads((out / "frontend.json").read_text())
    assert frontend["window"]["frames"] == 200 and frontend["blank_index"] == 0
    assert "streaming" not in frontend
    assert "# Export parity: PASSED" in (out / "parity.md").read_text()
    assert no_staging_left(out.parent)


def test_export_adds_its_numbers_to_the_training_runs_wandb(digits_export, trained_digits_run):
    run_id = (trained_digits_run / "wandb_run_id.txt").read_text().strip()
    logs = sorted((trained_digits_run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(logs) == 2  # the training run, then the export resuming it under the same id
    assert b"export/test/wer_fp16" in logs[-1].read_bytes()


def test_export_passes_with_the_fp16_executor_and_reports_beam_wers(
    trained_digits_run: Path, tmp_path: Path
) -> None:
    tokenizer = load_checkpoint(trained_digits_run, tmp_path).tokenizer
    lexicon = write_lexicon(lexicon_from_texts(DIGIT_WORDS, tokenizer), tmp_path / "lexicon.txt")
    beam = decode_settings(beam_size=4, lexicon=str(lexicon))
    outcome = export_checkpoint(
        trained_digits_run, tmp_path / "fp16", settings(executor="fp16", wandb=False),
        decode=beam,
    )
    assert outcome.directory == tmp_path / "fp16" and outcome.report.executor == "fp16"
    assert_parity_holds(outcome.report)
    assert outcome.report.beam_decoder.startswith("beam search: beam 4, lexicon ")
    for result in outcome.report.windowed.test_sets.values():
        # The lexicon allows only digit words: beam WERs are measured, and at most 100 %.
        assert 0 <= result.wer_fp32_windowed_beam <= 100 and 0 <= result.wer_fp16_beam <= 100
    assert "WER beam (fp32 / fp16)" in (outcome.directory / "parity.md").read_text()


def test_export_py_names_a_missing_lexicon_before_converting(
    trained_digits_run: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "lexicon.txt"
    done = run_export(trained_digits_run, tmp_path / "out", "decode.beam_size=4",
                      f"decode.lexicon={missing}")
    assert done.returncode == 1 and str(missing) in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def stressed_checkpoint(trained_digits_run: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("stressed") / "stressed.ckpt"
    cmd = [sys.executable, str(REPO / "tools" / "stress_checkpoint.py"), str(trained_digits_run),
           str(target), "--scale", "256"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return target


def test_stabilised_export_of_a_stressed_checkpoint_passes(stressed_checkpoint, tmp_path):
    outcome = export_checkpoint(stressed_checkpoint, tmp_path / "stressed", settings(wandb=False))
    assert outcome.report.executor == "fp16-strict"
    assert_parity_holds(outcome.report)


def test_unprotected_export_of_a_stressed_checkpoint_fails_and_publishes_nothing(
    stressed_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / EXPORT_MARKER).write_text("an export published earlier")  # may be replaced ...
    (out / "previous.txt").write_text("its content")
    done = run_export(stressed_checkpoint, out, "export.prenormalizer=none")

    assert done.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_MARKER, "previous.txt"]  # ... not
    rejected = tmp_path / "export.rejected"
    assert str(rejected / "parity.md") in " ".join(done.stdout.split())
    report = json.loads((rejected / "parity.json").read_text())
    assert not report["passed"] and report["reasons"]
    for result in report["test_sets"].values():  # every set overflows, and it shows
        assert result["nonfinite"] > 0 and result["first_nonfinite_op"]
        assert result["logits_psnr_db"] is None or result["logits_psnr_db"] < 30
    assert no_staging_left(tmp_path)


# ---------------------------------------------------------------------------------------------
# The streaming package (export.streaming): a model trained to stream gets stream.mlpackage too


@pytest.fixture(scope="module")
def streaming_export(trained_streaming_run: Path, tmp_path_factory) -> tuple:
    """(the completed export.py process, its out dir) for the tiny streaming run: auto."""
    out = tmp_path_factory.mktemp("exports") / "streaming-tiny"
    return run_export(trained_streaming_run, out), out


def test_a_streaming_model_gets_a_streaming_package_gated_like_the_windowed_one(
    streaming_export,
) -> None:
    done, out = streaming_export
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == EXPORT_FILES | {"stream.mlpackage"}

    streaming = json.loads((out / "frontend.json").read_text())["streaming"]
    assert streaming["package"] == "stream.mlpackage" and streaming["conv_context"] == "chunk"
    # export.streaming's defaults: 16 encoder frames (64 feature frames, 0.64 s), 64 left.
    assert (streaming["chunk_frames"], streaming["left_frames"]) == (16, 64)
    assert streaming["feature_frames_per_chunk"] == 64 and streaming["chunk_seconds"] == 0.64
    assert streaming["inputs"]["key_cache"] == [1, 2 * 32, 1, 64]  # layers * d_model, left
    assert streaming["caches"]["key_cache"] == {"shape": [1, 64, 1, 64], "output": "next_key_cache"}

    report = ExportReport.read(out / "parity.json")
    assert report.passed and report.windowed.passed and report.streaming.passed
    assert json.loads((out / "parity.json").read_text())["streaming"]["passed"] is True
    assert report.stream_package["chunk_frames"] == 16 and report.stream_package["bytes"] > 0
    assert list(report.streaming.test_sets) == list(report.windowed.test_sets)
    for name, result in report.streaming.test_sets.items():
        assert result.utterances == 8 and result.nonfinite == 0 and result.identical == 1.0
        assert result.logits_psnr_db >= 60  # FP16 rounding alone, chunk after chunk
        assert result.wer_fp32 == report.windowed.test_sets[name].wer_fp32  # full context

    title = "Streaming package (stream.mlpackage), chunk 16 frames (0.64 s), left 64 frames"
    assert f"## {title} (2.56 s): PASSED" in (out / "parity.md").read_text()
    printed = " ".join(done.stdout.split())
    assert title in printed and "WER fp16 stream" in printed and "Windowed package" in printed


def test_streaming_a_model_that_cannot_stream_is_refused_before_conversion(
    trained_digits_run: Path, tmp_path: Path, monkeypatch
) -> None:
    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted a package before refusing")

    monkeypatch.setattr(pipeline, "_build_package", must_not_convert)
    wanted = settings(wandb=False, streaming={"enabled": True})
    with pytest.raises(ConfigError, match="model.conv_context=symmetric cannot stream"):
        export_checkpoint(trained_digits_run, tmp_path / "out", wanted)
    assert list(tmp_path.iterdir()) == []  # no package, no staging directory left
