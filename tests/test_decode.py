import math

import pytest
import torch

from edge_conformer.decode import error_rates, greedy_ctc_decode
from edge_conformer.decode.ctc import collapse_ctc
from edge_conformer.training.schedules import cosine, noam


def test_collapse_merges_repeats_and_drops_blanks():
    # frames: a a _ a b b _ _ c  (blank = 0, token t is logit t + 1)
    frames = torch.tensor([1, 1, 0, 1, 2, 2, 0, 0, 3])
    assert collapse_ctc(frames) == [0, 0, 1, 2]
    assert collapse_ctc(torch.tensor([], dtype=torch.long)) == []


def test_greedy_decode_respects_lengths():
    logits = torch.full((2, 4, 3), -5.0)
    logits[0, :, 1] = 5.0  # utterance 0: token 0 on every frame -> one token
    logits[1, 0, 2] = 5.0  # utterance 1: token 1 then blanks, but only 1 valid frame
    logits[1, 1:, 0] = 5.0
    assert greedy_ctc_decode(logits, torch.tensor([4, 1])) == [[0], [1]]


def test_error_rates_are_percent():
    rates = error_rates(["one two three four"], ["one two four"])
    assert rates["wer"] == pytest.approx(25.0)
    assert error_rates(["a b"], ["a b"]) == {"wer": 0.0, "cer": 0.0}
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])


def test_schedules_warm_up_then_decay():
    warm = noam(100)
    assert warm(50) == pytest.approx(0.5) and warm(100) == pytest.approx(1.0)
    assert warm(400) == pytest.approx(0.5)
    decay = cosine(10, 110, min_factor=0.0)
    assert decay(5) == pytest.approx(0.5) and decay(60) == pytest.approx(0.5)
    assert decay(110) == pytest.approx(0.0, abs=1e-12) and not math.isnan(decay(1000))
