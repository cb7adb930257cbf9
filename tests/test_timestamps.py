"""Word timestamps and confidences on synthetic CTC output and a synthetic energy profile whose
word boundaries are known (benchmarks/decoding.py measures them on real digits)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import log_probs
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode.timestamps import (
    SPEECH_RANGE_DB,
    WordTiming,
    align_words,
    speech_frames,
    word_timings,
)
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR

FRAMES_PER_SECOND = 100.0  # feature frames: 10 ms hops
N_MELS = 4
SILENCE_DB = -90.0  # far below SPEECH_RANGE_DB, so the smoothed edges fall on known frames


def log_mel(levels_db: list[float]) -> torch.Tensor:
    """A log-mel (frames, N_MELS) whose frame energies are `levels_db` (+ 10 log10 N_MELS)."""
    return torch.tensor(levels_db, dtype=torch.float64)[:, None].repeat(1, N_MELS) * (
        math.log(10) / 10)


def speech_between(total: int, *regions: tuple[int, int]) -> list[float]:
    levels = [SILENCE_DB] * total
    for start, end in regions:
        levels[start:end] = [0.0] * (end - start)
    return levels


def two_words(tokenizer: Tokenizer) -> tuple[torch.Tensor, list[int]]:
    """20 encoder frames (80 feature frames): "three" fires at frame 5, "oh" (▁ o h) at 12-14."""
    frames: list[dict[str, float]] = [{} for _ in range(20)]
    frames[5] = {"▁three": 0.9}
    frames[12], frames[13], frames[14] = {"▁": 0.9}, {"o": 0.8}, {"h": 0.7}
    ids = tokenizer.sp.piece_to_id(["▁three", "▁", "o", "h"])
    return log_probs(tokenizer, frames), ids


def test_alignment_groups_pieces_into_words_at_their_frames(digits_tokenizer: Tokenizer) -> None:
    emissions, ids = two_words(digits_tokenizer)
    words = align_words(emissions, ids, digits_tokenizer)
    assert [(digits_tokenizer.decode(w.token_ids), w.start, w.end) for w in words] == [
        ("three", 5, 6), ("oh", 12, 15)]
    assert words[1].frame_log_probs == pytest.approx([math.log(p) for p in (0.9, 0.8, 0.7)],
                                                     abs=1e-4)
    assert align_words(emissions, [], digits_tokenizer) == []
    # A repeated piece needs a blank between: 3 frames, not 2.
    assert len(align_words(emissions[:3], ids[:1] * 2, digits_tokenizer)) == 2
    assert align_words(emissions[:2], ids[:1] * 2, digits_tokenizer) == []


def test_words_reach_from_their_anchor_to_the_nearest_pause(digits_tokenizer: Tokenizer) -> None:
    emissions, ids = two_words(digits_tokenizer)
    total = emissions.shape[0] * SUBSAMPLING_FACTOR
    # Speech 0.12-0.30 s around "three"'s spike (0.20-0.24 s), 0.40-0.62 s around "oh"'s.
    levels = speech_between(total, (12, 30), (40, 62))
    timings = word_timings(emissions, ids, digits_tokenizer, log_mel(levels), FRAMES_PER_SECOND)
    assert timings == [
        WordTiming("three", 0.12, 0.30, 0.9),
        WordTiming("oh", 0.40, 0.62, round((0.9 * 0.8 * 0.7) ** (1 / 3), 4)),
    ]
    assert timings[0].to_json() == {"word": "three", "start": 0.12, "end": 0.30,
                                    "confidence": 0.9}


def test_words_without_a_pause_meet_at_the_quietest_frame(digits_tokenizer: Tokenizer) -> None:
    emissions, ids = two_words(digits_tokenizer)
    total = emissions.shape[0] * SUBSAMPLING_FACTOR
    levels = speech_between(total, (12, 62))
    levels[34:39] = [-20.0] * 5  # quieter, but speech (within SPEECH_RANGE_DB of the peak)
    assert -20.0 > -SPEECH_RANGE_DB
    timings = word_timings(emissions, ids, digits_tokenizer, log_mel(levels), FRAMES_PER_SECOND)
    assert [(t.start, t.end) for t in timings] == [(0.12, 0.36), (0.36, 0.62)]


def test_short_pauses_stay_inside_a_word_and_the_noise_floor_is_not_speech() -> None:
    levels = torch.tensor([-90.0] * 5 + [0.0] * 5 + [-90.0] * 2 + [0.0] * 5 + [-90.0] * 3
                          + [0.0] * 5 + [-90.0] * 5)
    speech = speech_frames(levels, min_pause_frames=3)
    assert speech.tolist() == [False] * 5 + [True] * 12 + [False] * 3 + [True] * 5 + [False] * 5
    # Loud stationary noise 10 dB under the speech: within 40 dB of it, but at the floor.
    noisy = torch.where(levels < -50, torch.tensor(-10.0), levels)
    assert speech_frames(noisy, min_pause_frames=3).tolist() == speech.tolist()
