"""The records that cross modules: their JSON round trip, today's files, and bad files."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from record_samples import MISMATCH, export_report, run_results, set_parity

from conftest import REPO
from edge_conformer.errors import UserInputError
from edge_conformer.records import (
    CoreMLParity,
    ErrorRates,
    ExportReport,
    Mismatch,
    ParitySection,
    ParityThresholds,
    RunResults,
    Variant,
)

# results.json and parity.json as train.py and export.py wrote them before the records existed.
RESULTS_OF_TODAY = {
    "run_name": "digits-xs-depthwise-l2",
    "run_dir": "/runs/digits-xs-depthwise-l2",
    "variant": {"size": "xs", "subsampling": "depthwise", "norm": "l2"},
    "parameters": 123456,
    "vocab_size": 16,
    "train_steps": 300,
    "train_wall_seconds": 41.27,
    "train_audio_seconds": 9876.5,
    "audio_seconds_per_second": 239.31,
    "skipped_utterances": 0,
    "checkpoint": "/runs/digits-xs-depthwise-l2/checkpoints/best-step=300.ckpt",
    "test": {"test": {"wer": 12.5, "cer": 6.25, "utterances": 8},
             "unseen_speaker": {"wer": 37.5, "cer": 20.0, "utterances": 8}},
    "wandb_run_id": None,
}
PARITY_OF_TODAY = {
    "passed": False,
    "reasons": ["test: identical transcripts 0.875 < min_identical 0.99 (0 of the 1 differing "
                "utterances differ only at FP32 ties, not counted)"],
    "checkpoint": "/runs/digits-xs-depthwise-l2/checkpoints/best-step=300.ckpt",
    "variant": {"name": "xs", "subsampling": "depthwise", "norm": "l2", "d_model": 32,
                "num_layers": 2},
    "executor": "fp16-strict",
    "prenormalizer": "mad",
    "softmax_rescale": True,
    "thresholds": {"min_identical": 0.99, "max_wer_delta": 0.5, "count_ties": False},
    "window": {"frames": 200, "seconds": 2.0, "overlap_frames": 50, "overlap_seconds": 0.5,
               "hop_frames": 150, "output_frames": 50},
    "coreml_runtime": "run",
    "package_bytes": 1234567,
    "test_sets": {
        "test": {
            "utterances": 8, "wer_fp32": 12.5, "wer_fp32_windowed": 12.5, "wer_fp16": 15.0,
            "windowing_cost": 0.0, "identical": 0.875, "tied_mismatches": 0,
            "logits_psnr_db": 68.3,
            "mismatches": [{"id": "u3", "reference": "one two", "fp32": "one two",
                            "fp32_windowed": "one two", "fp16": "one", "coreml": "one two",
                            "fp32_margin_ulps": 12.5}],
            "coreml": {"wer": 12.5, "identical": 1.0},
            "nonfinite": 0, "nonfinite_by_op_type": {}, "first_nonfinite_op": None,
        },
        "unseen_speaker": {
            "utterances": 8, "wer_fp32": 37.5, "wer_fp32_windowed": 40.0, "wer_fp16": 40.0,
            "windowing_cost": 2.5, "identical": 1.0, "tied_mismatches": 0,
            "logits_psnr_db": None, "mismatches": [],
            "nonfinite": 3, "nonfinite_by_op_type": {"exp": 3}, "first_nonfinite_op": "exp_4",
        },
    },
    "ops": {"einsum": 16, "conv": 12},
    "convert_seconds": 20.51,
    "export_seconds": 61.02,
}

RECORDS = [
    ErrorRates(wer=20.0, cer=10.0, utterances=8),
    Variant(size="s", subsampling="regular", norm="mad"),
    run_results(),
    run_results(wandb_run_id=None, test={}),
    ParityThresholds(min_identical=0.99, max_wer_delta=0.5),
    MISMATCH,
    CoreMLParity(wer=5.0, identical=0.995),
    set_parity(),
    set_parity(mismatches=(MISMATCH,), coreml=CoreMLParity(wer=5.5, identical=0.99),
               logits_psnr_db=None, nonfinite=2, nonfinite_by_op_type={"exp": 2},
               first_nonfinite_op="exp_1"),
    ParitySection(reasons=("test: 2 non-finite values",), test_sets={"test": set_parity()}),
    export_report(),
    export_report(test_sets={"a": set_parity(), "b": set_parity(identical=0.9)},
                  reasons=("b: identical transcripts 0.900",)),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_survives_its_json_form(record) -> None:
    as_text = json.dumps(record.to_json())
    assert type(record).from_json(json.loads(as_text)) == record


def test_records_are_written_and_read_as_files(tmp_path) -> None:
    results, report = run_results(), export_report(reasons=("test: no utterances were decoded",))
    assert RunResults.read(results.write(tmp_path / "results.json")) == results
    assert ExportReport.read(report.write(tmp_path / "parity.json")) == report
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False


def test_results_json_of_today_reads_and_writes_back_unchanged() -> None:
    results = RunResults.from_json(RESULTS_OF_TODAY)
    assert results.variant == Variant(size="xs", subsampling="depthwise", norm="l2")
    assert results.test["unseen_speaker"] == ErrorRates(wer=37.5, cer=20.0, utterances=8)
    assert results.wandb_run_id is None
    assert results.to_json() == RESULTS_OF_TODAY


def test_parity_json_of_today_reads_and_writes_back_unchanged() -> None:
    report = ExportReport.from_json(PARITY_OF_TODAY)
    assert not report.passed and report.reasons == tuple(PARITY_OF_TODAY["reasons"])
    test, unseen = report.windowed.test_sets["test"], report.windowed.test_sets["unseen_speaker"]
    assert test.mismatches[0].fp16 == "one" and test.mismatches[0].coreml == "one two"
    assert test.coreml == CoreMLParity(wer=12.5, identical=1.0) and unseen.coreml is None
    assert unseen.logits_psnr_db is None and unseen.nonfinite_by_op_type == {"exp": 3}
    assert report.thresholds == ParityThresholds(min_identical=0.99, max_wer_delta=0.5,
                                                 count_ties=False)
    assert report.to_json() == PARITY_OF_TODAY


def test_a_parity_json_from_before_count_ties_reads_as_counting_ties() -> None:
    """Reports written before export.count_ties existed counted every tie."""
    older = copy.deepcopy(PARITY_OF_TODAY)
    del older["thresholds"]["count_ties"]
    assert ExportReport.from_json(older).thresholds.count_ties is True


def test_a_section_passes_exactly_when_it_has_no_reasons() -> None:
    assert export_report().passed and export_report().to_json()["passed"] is True
    failed = copy.deepcopy(PARITY_OF_TODAY)
    failed["passed"] = True  # a stale verdict in the file does not override its reasons
    assert not ExportReport.from_json(failed).passed


def test_defaulted_fields_may_be_absent_and_unknown_keys_are_ignored() -> None:
    # Files written before a field existed, and files from a newer writer.
    data = {**MISMATCH.to_json(), "wer_stream": 3.0}
    assert "coreml" not in data
    assert Mismatch.from_json(data) == MISMATCH


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps({k: v for k, v in RESULTS_OF_TODAY.items() if k != "train_steps"}),
         "RunResults lacks train_steps"),
        (json.dumps({**RESULTS_OF_TODAY, "test": {"test": {"wer": 1.0, "cer": 1.0}}}),
         "ErrorRates lacks utterances"),
        (json.dumps([1, 2]), "RunResults must be a JSON object, got list"),
        ("{not json", "Expecting property name"),
    ],
)
def test_a_bad_results_file_is_named_in_a_one_line_error(tmp_path, content, message) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(UserInputError) as error:
        RunResults.read(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_bad_parity_file_is_named_in_a_one_line_error(tmp_path) -> None:
    path = tmp_path / "parity.json"
    test = {k: v for k, v in PARITY_OF_TODAY["test_sets"]["test"].items() if k != "nonfinite"}
    sets = {"test": test}
    path.write_text(json.dumps({**PARITY_OF_TODAY, "test_sets": sets}))
    with pytest.raises(UserInputError, match=r"parity.json: .*SetParity lacks nonfinite$"):
        ExportReport.read(path)


def test_records_import_without_torch_lightning_or_coremltools() -> None:
    code = ("import sys, edge_conformer.records; "
            "print(sorted({'torch', 'lightning', 'coremltools'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_results_table_shows_streaming_rates_only_for_streaming_runs() -> None:
    from rich.console import Console

    from edge_conformer.records import ErrorRates
    from edge_conformer.training.results import results_table

    def rendered(results) -> str:
        console = Console(width=120, record=True)
        console.print(results_table(results))
        return console.export_text()

    assert "streaming" not in rendered(run_results())
    streamed = run_results(test={
        "test": ErrorRates(wer=2.0, cer=1.0, utterances=8, wer_stream=2.5, cer_stream=1.25),
    })
    text = rendered(streamed)
    assert "WER % streaming" in text and "2.50" in text and "1.25" in text
