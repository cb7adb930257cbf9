"""Hand-made records for tests: complete and valid by default, any field changed by keyword."""

from __future__ import annotations

from dataclasses import replace

from edge_conformer import records


def run_results(**changes) -> records.RunResults:
    results = records.RunResults(
        run_name="digits-xs-depthwise-l2", run_dir="outputs/digits-xs-depthwise-l2",
        variant=records.Variant(size="xs", subsampling="depthwise", norm="l2"),
        parameters=1_000_000, vocab_size=16, train_steps=10, train_wall_seconds=12.5,
        train_audio_seconds=600.0, audio_seconds_per_second=48.0, skipped_utterances=1,
        checkpoint="outputs/digits-xs-depthwise-l2/checkpoints/best-step=10.ckpt",
        test={"test": records.ErrorRates(wer=20.0, cer=10.0, utterances=8),
              "unseen_speaker": records.ErrorRates(wer=30.0, cer=15.0, utterances=8)},
        wandb_run_id="abc123",
    )
    return replace(results, **changes)


def set_parity(**changes) -> records.SetParity:
    result = records.SetParity(
        utterances=200, wer_fp32=4.5, wer_fp32_windowed=5.0, wer_fp16=5.0, windowing_cost=0.5,
        identical=1.0, tied_mismatches=0, logits_psnr_db=70.0, mismatches=(), nonfinite=0,
        nonfinite_by_op_type={}, first_nonfinite_op=None,
    )
    return replace(result, **changes)


MISMATCH = records.Mismatch(id="utt-7", reference="one two", fp32="one two",
                            fp32_windowed="one two", fp16="one too", fp32_margin_ulps=2.5)


def export_report(test_sets: dict[str, records.SetParity] | None = None,
                  reasons: tuple[str, ...] = (), **changes) -> records.ExportReport:
    section = records.ParitySection(reasons=reasons, test_sets=test_sets or {"test": set_parity()})
    report = records.ExportReport(
        windowed=section,
        checkpoint="outputs/run/checkpoints/best-step=10.ckpt",
        variant={"name": "xs", "subsampling": "depthwise", "norm": "mad", "d_model": 32,
                 "num_layers": 2},
        executor="fp16-strict", prenormalizer="mad", softmax_rescale=True,
        thresholds=records.ParityThresholds(min_identical=0.99, max_wer_delta=0.5),
        window={"frames": 200, "seconds": 2.0, "overlap_frames": 50, "overlap_seconds": 0.5,
                "hop_frames": 150, "output_frames": 50},
        coreml_runtime="run", package_bytes=3 * 2**20, convert_seconds=20.0,
        export_seconds=60.0, ops={"einsum": 8, "conv": 4},
    )
    return replace(report, **changes)
