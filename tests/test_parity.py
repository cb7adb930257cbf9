"""The parity gate's decisions, its logits PSNR, its measurements and report, on hand-made
results."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from record_samples import MISMATCH, export_report, set_parity
from rich.console import Console

from conftest import REPO
from edge_conformer.decode.beam import greedy_decoder
from edge_conformer.export.parity import (
    STREAMING,
    TIE_ULPS,
    EvalUtterance,
    PackageRecognizers,
    PsnrMeter,
    ReferenceRecognizers,
    compression_notes,
    decode_references,
    flipped_margin_ulps,
    gate_failures,
    judge,
    measure_test_set,
    parity_markdown,
)
from edge_conformer.export.pipeline import parity_tables, publish_if_passed, wandb_summary
from edge_conformer.export.publish import staging_dir
from edge_conformer.records import (
    CompressionTrial,
    CoreMLParity,
    ExportReport,
    ParityThresholds,
)
from edge_conformer.runtime.windowing import one_by_one

DEFAULTS = OmegaConf.load(REPO / "conf" / "export" / "default.yaml")
THRESHOLDS = ParityThresholds(DEFAULTS.min_identical, DEFAULTS.max_wer_delta, DEFAULTS.count_ties)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"identical": 0.99, "wer_fp16": 5.5}, None),  # both exactly at the limit: passes
        ({"identical": 0.985}, "identical transcripts 0.985 < min_identical 0.99"),
        ({"identical": 0.98, "tied_mismatches": 1},
         "0.985 < min_identical 0.99 (1 of the 4 differing"),
        ({"identical": 0.98, "tied_mismatches": 2}, None),  # 0.98 + 2 ties of 200: 0.99
        ({"nonfinite": 3, "first_nonfinite_op": "mul_4"}, "3 non-finite values"),
        ({"wer_fp16": 5.6}, "0.60 points above"),
        ({"utterances": 0}, "no utterances"),
    ],
)
def test_gate(changes: dict, reason: str | None) -> None:
    reasons = gate_failures({"test": set_parity(**changes)}, THRESHOLDS)
    if reason is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reasons[0].startswith("test: ") and reason in reasons[0]


def test_ties_count_against_min_identical_only_when_asked() -> None:
    """Utterances that differ only at FP32 ties are identical to the gate by default; with
    count_ties every differing transcript counts, and the reason says which rule judged."""
    tied = {"test": set_parity(identical=0.98, tied_mismatches=4)}
    assert gate_failures(tied, THRESHOLDS) == []
    strict = ParityThresholds(THRESHOLDS.min_identical, THRESHOLDS.max_wer_delta, count_ties=True)
    [reason] = gate_failures(tied, strict)
    assert "identical transcripts 0.980 < min_identical 0.99" in reason
    assert "4 of the 4 differing utterances differ only at FP32 ties, counted" in reason
    # Ties excuse the transcripts, not the words: max_wer_delta still judges them.
    assert gate_failures({"test": set_parity(identical=0.98, tied_mismatches=4, wer_fp16=5.6)},
                         THRESHOLDS) == ["test: FP16 WER 5.60% is 0.60 points above FP32 "
                                         "windowed 5.00% (max_wer_delta 0.5)"]


def test_psnr_of_a_known_error_and_undefined_once_non_finite() -> None:
    reference = torch.tensor([[10.0, -2.0], [0.0, 4.0]])
    meter = PsnrMeter()
    meter.add(reference, reference + 0.01)  # RMS error 0.01 against a peak of 10: 60 dB
    assert math.isclose(meter.db, 60.0, abs_tol=0.01)
    meter.add(reference, torch.tensor([[math.inf, 0.0], [0.0, 0.0]]))
    assert meter.db is None


def test_flips_are_measured_in_fp16_ulps_of_the_fp32_margin() -> None:
    # Frame 0: 8.0 vs 7.996 (FP16 ulp at 8 is 2**-7): a tie. Frame 1: 5 vs 1, far apart.
    reference = torch.tensor([[8.0, 7.996, 0.0], [5.0, 1.0, 0.0]])
    tie_flipped = torch.tensor([[7.99, 8.0, 0.0], [5.0, 1.0, 0.0]])
    assert flipped_margin_ulps(reference, tie_flipped) == pytest.approx(0.004 / 2**-7, rel=1e-3)
    assert flipped_margin_ulps(reference, tie_flipped) <= TIE_ULPS
    both_flipped = torch.tensor([[7.99, 8.0, 0.0], [1.0, 5.0, 0.0]])  # the largest margin counts
    assert flipped_margin_ulps(reference, both_flipped) == pytest.approx(4.0 / 2**-8, rel=1e-3)
    assert flipped_margin_ulps(reference, reference) == 0.0


class CountingExecutor:
    """Stands in for PackageExecutor's non-finite statistics: one inf per FP16 run."""

    def __init__(self) -> None:
        self.nonfinite_by_op_type = {"stale": 5}  # left from an earlier test set
        self.first_nonfinite_op: str | None = "stale_0"

    @property
    def nonfinite_count(self) -> int:
        return sum(self.nonfinite_by_op_type.values())

    def reset_stats(self) -> None:
        self.nonfinite_by_op_type, self.first_nonfinite_op = {}, None

    def run_fp16(self, logits: torch.Tensor) -> torch.Tensor:
        self.nonfinite_by_op_type["exp"] = self.nonfinite_by_op_type.get("exp", 0) + 1
        self.first_nonfinite_op = self.first_nonfinite_op or "exp_1"
        return logits[:, [0, 2, 1]]  # tokens 1 and 2 swapped: FP16 misreads them


def test_a_test_set_is_measured_into_a_set_parity_record() -> None:
    # The "features" are logits: blank, token 1, token 2 per frame; the recognisers pass them on.
    silence = torch.tensor([[5.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
    word = torch.tensor([[0.0, 5.0, 4.99], [5.0, 0.0, 1.0]])  # token 1 barely beats token 2
    tokenizer = SimpleNamespace(decode=lambda ids: " ".join(["one", "two"][i] for i in ids))
    executor = CountingExecutor()
    identity = lambda logits: logits
    utterances = [EvalUtterance("quiet", "", silence), EvalUtterance("utt-1", "one", word)]
    references = decode_references(
        utterances, ReferenceRecognizers(fp32=identity, fp32_reference=identity), tokenizer
    )
    recognizers = PackageRecognizers(fp16=one_by_one(executor.run_fp16))
    result = measure_test_set(references, recognizers, tokenizer, fp16_counter=executor)
    assert (result.utterances, result.wer_fp32, result.wer_fp16) == (2, 0.0, 100.0)
    assert result.identical == 0.5 and result.windowing_cost == 0.0
    (mismatch,) = result.mismatches
    assert (mismatch.id, mismatch.fp32_windowed, mismatch.fp16) == ("utt-1", "one", "two")
    # 0.01 apart at 5.0, where an FP16 ulp is 2**-8: 2.56 ulps, a tie FP16 cannot order.
    assert mismatch.fp32_margin_ulps == 2.56 and result.tied_mismatches == 1
    assert (result.nonfinite, result.first_nonfinite_op) == (2, "exp_1")  # this set's only
    assert result.coreml is None


def test_a_beam_decodes_the_fp32_and_the_fp16_logits_beside_greedy() -> None:
    # The greedy decoder stands in for a beam: what matters is which logits each WER decodes.
    word = torch.tensor([[0.0, 5.0, 4.0], [5.0, 0.0, 1.0]])
    tokenizer = SimpleNamespace(decode=lambda ids: " ".join(["one", "two"][i] for i in ids))
    executor, identity, beam = CountingExecutor(), (lambda logits: logits), greedy_decoder()
    references = decode_references(
        [EvalUtterance("utt-1", "one", word)],
        ReferenceRecognizers(fp32=identity, fp32_reference=identity), tokenizer, beam,
    )
    recognizers = PackageRecognizers(fp16=one_by_one(executor.run_fp16))
    result = measure_test_set(references, recognizers, tokenizer, fp16_counter=executor,
                              beam=beam)
    assert (result.wer_fp32_windowed_beam, result.wer_fp16_beam) == (0.0, 100.0)
    assert (result.wer_fp32_windowed, result.wer_fp16) == (0.0, 100.0)  # greedy, as gated


def test_reports_show_beam_wers_only_when_measured(tmp_path) -> None:
    greedy_only = export_report()
    assert "beam" not in parity_markdown(greedy_only)
    assert not [key for key in wandb_summary(greedy_only, tmp_path) if "beam" in key]
    beam = export_report(test_sets={"test": set_parity(wer_fp32_windowed_beam=4.0,
                                                       wer_fp16_beam=4.5)},
                         beam_decoder="beam search: beam 8")
    markdown = parity_markdown(beam)
    assert "| test set | utts | WER fp32 | WER fp32 windowed | WER fp16 | " \
           "WER beam (fp32 / fp16) | identical |" in markdown
    assert "| test | 200 | 4.50 | 5.00 | 5.00 | 4.00 / 4.50 | 1.000 |" in markdown
    assert "beam WERs (not gated): beam search: beam 8" in markdown
    assert ExportReport.from_json(json.loads(json.dumps(beam.to_json()))) == beam
    assert wandb_summary(beam, tmp_path)["export/test/wer_fp16_beam"] == 4.5
    # The console at 120 columns, with the beam column and the longest test set name.
    beam = replace(beam, windowed=replace(
        beam.windowed, test_sets={"unseen_speaker": beam.windowed.test_sets["test"]}))
    console = Console(file=io.StringIO(), width=120)
    console.print(parity_tables(beam))
    assert "unseen_speaker" in console.file.getvalue()
    assert "4.00 / 4.50" in console.file.getvalue()


def test_parity_md_renders_the_report_record() -> None:
    failed = set_parity(identical=0.995, mismatches=(MISMATCH,), tied_mismatches=1,
                        logits_psnr_db=None, coreml=CoreMLParity(wer=5.5, identical=0.99))
    report = export_report(test_sets={"clean": set_parity(), "other": failed},
                           reasons=("other: identical transcripts 0.995 < min_identical 1.0",))
    markdown = parity_markdown(report)
    assert markdown.startswith("# Export parity: FAILED\n")
    assert "| clean | 200 | 4.50 | 5.00 | 5.00 | 1.000 | 0 | 70.0 | not run |" in markdown
    assert "| other | 200 | 4.50 | 5.00 | 5.00 | 0.995 | 0 | n/a (non-finite) | WER 5.50%, " \
           "identical 0.990 |" in markdown
    assert "- other: identical transcripts 0.995 < min_identical 1.0" in markdown
    assert '- `utt-7` (2.5 ulps): FP32 windowed "one two" / FP16 "one too"' in markdown
    assert "| einsum | 8 |" in markdown


# ---------------------------------------------------------------------------------------------
# The streaming package's section (stream.mlpackage, chunk by chunk against the FP32 chunk loop)

STREAM_PACKAGE = {"chunk_frames": 16, "left_frames": 64, "chunk_seconds": 0.64,
                  "left_seconds": 2.56, "algorithmic_latency_seconds": 0.655, "bytes": 2**20}


def streaming_report(**changes) -> ExportReport:
    """A report whose windowed section passed, with a streaming section of `changes`."""
    streaming = judge({"test": set_parity(**changes)}, THRESHOLDS, STREAMING)
    return export_report(streaming=streaming, stream_package=STREAM_PACKAGE)


def test_the_streaming_gate_has_the_same_thresholds_and_names_its_reference() -> None:
    assert streaming_report().passed
    (reason,) = streaming_report(wer_fp16=5.6).streaming.reasons
    assert reason == ("test: FP16 WER 5.60% is 0.60 points above FP32 streaming 5.00% "
                      "(max_wer_delta 0.5)")


def test_a_streaming_package_that_recognises_noise_is_not_published(tmp_path) -> None:
    # As above, the "features" are logits and the FP32 ways pass them on; the streaming
    # package's FP16 way returns noise that always reads "two".
    tokenizer = SimpleNamespace(decode=lambda ids: " ".join(["one", "two"][i] for i in ids))
    word = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, 1.0]])
    noise = lambda logits: torch.tensor([0.0, 0.0, 9.0]).expand_as(logits)  # noqa: E731
    identity = lambda logits: logits  # noqa: E731
    references = decode_references(
        [EvalUtterance(f"utt-{i}", "one", word) for i in range(3)],
        ReferenceRecognizers(fp32=identity, fp32_reference=identity), tokenizer,
    )
    result = measure_test_set(references, PackageRecognizers(fp16=one_by_one(noise)), tokenizer,
                              fp16_counter=CountingExecutor())
    assert (result.wer_fp32_windowed, result.wer_fp16, result.identical) == (0.0, 100.0, 0.0)
    failed = export_report(streaming=judge({"test": result}, THRESHOLDS, STREAMING),
                           stream_package=STREAM_PACKAGE)
    assert failed.windowed.passed and not failed.passed
    assert failed.reasons[0].startswith("streaming test: identical transcripts 0.000")

    out = tmp_path / "export"
    with staging_dir(out) as staging:
        failed.write(staging / "parity.json")
    assert publish_if_passed(staging, out, failed) == tmp_path / "export.rejected"
    assert not out.exists()  # nothing published: the windowed package passed, alone
    with staging_dir(out) as staging:  # the same export with both sections passing
        streaming_report().write(staging / "parity.json")
    assert publish_if_passed(staging, out, streaming_report()) == out and out.is_dir()


def test_parity_json_holds_the_streaming_section_and_the_overall_verdict() -> None:
    report = streaming_report(identical=0.5)
    data = json.loads(json.dumps(report.to_json()))
    # Top level: the export's verdict, the windowed section's reasons and test sets.
    assert data["passed"] is False and data["reasons"] == []
    assert data["streaming"]["passed"] is False and data["streaming"]["reasons"]
    assert data["stream_package"]["chunk_frames"] == 16
    assert ExportReport.from_json(data) == report
    assert "streaming" not in export_report().to_json()  # no streaming package, no section


def test_reports_show_the_streaming_table_beside_the_windowed_one() -> None:
    report = streaming_report(wer_fp32_windowed=6.25, wer_fp16=6.5)
    markdown = parity_markdown(report)
    assert ("## Streaming package (stream.mlpackage), chunk 16 frames (0.64 s), left 64 "
            "frames (2.56 s): PASSED") in markdown
    assert ("| test set | utts | WER fp32 full | WER fp32 stream | WER fp16 stream "
            "| identical |") in markdown
    assert "| test | 200 | 4.50 | 6.25 | 6.50 | 1.000 | 0 | 70.0 |\n" in markdown
    assert "| test | 200 | 4.50 | 5.00 | 5.00 | 1.000 | 0 | 70.0 |\n" in markdown

    # The console at 120 columns, with the recipes' longest test set name: nothing wraps.
    sets = {"unseen_speaker": set_parity()}
    report = export_report(test_sets=sets, stream_package=STREAM_PACKAGE,
                           streaming=judge(sets, THRESHOLDS, STREAMING))
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(parity_tables(report))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 120
    assert [line.split("┃")[2:5] for line in lines if "utts" in line] == [
        [" WER fp32 ", " WER fp32 windowed ", " WER fp16 "],
        [" WER fp32 full ", " WER fp32 stream ", " WER fp16 stream "],
    ]
    assert sum("unseen_speaker │  200 │" in line for line in lines) == 2


def test_wandb_summary_adds_the_streaming_numbers(tmp_path) -> None:
    summary = wandb_summary(streaming_report(wer_fp32_windowed=6.25, wer_fp16=6.5), tmp_path)
    assert summary["export/stream/passed"] is True and summary["export/stream/chunk_frames"] == 16
    assert summary["export/stream/test/wer_fp16"] == 6.5 and summary["export/test/wer_fp16"] == 5.0
    assert not [key for key in wandb_summary(export_report(), tmp_path) if "/stream/" in key]


# ---------------------------------------------------------------------------------------------
# The compression table (export.compress): every level tried, its size, results and verdict


def compression_report() -> ExportReport:
    """int8 kept for model.mlpackage after palettize8 failed; stream.mlpackage kept FP16."""
    sets = {"test": set_parity(), "unseen_speaker": set_parity()}
    failed = {"test": set_parity(identical=0.9, wer_fp16=6.0), "unseen_speaker": set_parity()}
    trials = (
        CompressionTrial("model.mlpackage", "palettize8", 1_009_000, 2_000_000,
                         judge(failed, THRESHOLDS), published=False),
        CompressionTrial("model.mlpackage", "int8", 1_010_000, 2_000_000,
                         judge(sets, THRESHOLDS), published=True),
        CompressionTrial("stream.mlpackage", "int8", 1_020_000, 2_010_000,
                         judge(failed, THRESHOLDS, STREAMING), published=False),
        CompressionTrial("stream.mlpackage", "none", 2_010_000, 2_010_000,
                         judge(sets, THRESHOLDS, STREAMING), published=True),
    )
    return export_report(test_sets=sets, compression="int8", compression_trials=trials,
                         streaming=judge(sets, THRESHOLDS, STREAMING),
                         stream_package={**STREAM_PACKAGE, "compression": "none"})


def test_parity_json_holds_every_level_tried() -> None:
    report = compression_report()
    data = json.loads(json.dumps(report.to_json()))
    assert data["compression"] == "int8" and data["stream_package"]["compression"] == "none"
    assert [(t["package"], t["level"], t["section"]["passed"], t["published"])
            for t in data["compression_trials"]][:2] == [
        ("model.mlpackage", "palettize8", False, False), ("model.mlpackage", "int8", True, True)]
    assert ExportReport.from_json(data) == report
    assert "compression_trials" not in export_report().to_json()  # export.compress=none


def test_reports_show_each_level_and_why_the_export_holds_what_it_holds() -> None:
    report = compression_report()
    markdown = parity_markdown(report)
    assert "| model | int8 | 1.01 | 50% | test | 5.00 | 5.00 | 1.000 | 70.0 | passed, kept |" \
        in markdown
    assert "| model | palettize8 | 1.01 | 50% | test | 5.00 | 6.00 | 0.900 | 70.0 | failed |" \
        in markdown
    assert "| stream | none | 2.01 | 100% | unseen_speaker | 5.00 | 5.00 | 1.000 | 70.0 | " \
        "passed, kept |" in markdown
    notes = compression_notes(report)
    assert notes == [
        "model.mlpackage: palettize8 failed the gate (test: identical transcripts 0.900 < "
        "min_identical 0.99 (0 of the 20 differing utterances differ only at FP32 ties, not "
        "counted); test: "
        "FP16 WER 6.00% is 1.00 points above FP32 windowed 5.00% (max_wer_delta 0.5)); the "
        "export holds int8 (1.01 MB)",
        "stream.mlpackage: int8 failed the gate (test: identical transcripts 0.900 < "
        "min_identical 0.99 (0 of the 20 differing utterances differ only at FP32 ties, not "
        "counted); test: "
        "FP16 WER 6.00% is 1.00 points above FP32 streaming 5.00% (max_wer_delta 0.5)); the "
        "export holds the FP16 package (2.01 MB)",
    ]
    assert all(f"- {note}" in markdown for note in notes)
    assert "package 3.15 MB (weights: int8)" in markdown

    console = Console(width=120, record=True, file=io.StringIO())
    console.print(parity_tables(report))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 120
    assert sum(" stream  │ none " in line for line in lines) == 2  # one row per test set
