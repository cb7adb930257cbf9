"""The parity gate's decisions and its logits PSNR, on hand-made results."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from edge_conformer.export.parity import (
    TIE_ULPS,
    ParityThresholds,
    PsnrMeter,
    flipped_margin_ulps,
    gate_failures,
)

DEFAULTS = OmegaConf.load(REPO / "conf" / "export" / "default.yaml")
THRESHOLDS = ParityThresholds(DEFAULTS.min_identical, DEFAULTS.max_wer_delta)


def result(**changes) -> dict:
    good = {"utterances": 200, "identical": 1.0, "nonfinite": 0, "first_nonfinite_op": None,
            "wer_fp32_windowed": 5.0, "wer_fp16": 5.0, "tied_mismatches": 0}
    return {**good, **changes}


def test_defaults_are_the_documented_gate() -> None:
    assert (THRESHOLDS.min_identical, THRESHOLDS.max_wer_delta) == (0.99, 0.5)
    assert DEFAULTS.executor == "fp16-strict" and DEFAULTS.prenormalizer == "mad"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"identical": 0.99, "wer_fp16": 5.5}, None),  # both exactly at the limit: passes
        ({"identical": 0.985}, "identical transcripts 0.985 < min_identical 0.99"),
        ({"identical": 0.98, "tied_mismatches": 3}, "3 of the 4 differing utterances differ only"),
        ({"nonfinite": 3, "first_nonfinite_op": "mul_4"}, "3 non-finite values"),
        ({"wer_fp16": 5.6}, "0.60 points above"),
        ({"utterances": 0}, "no utterances"),
    ],
)
def test_gate(changes: dict, reason: str | None) -> None:
    reasons = gate_failures({"test": result(**changes)}, THRESHOLDS)
    if reason is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reasons[0].startswith("test: ") and reason in reasons[0]


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
