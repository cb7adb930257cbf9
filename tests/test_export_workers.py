"""The parity gate's FP16 decoding on several processes gives what one process gives."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
import torch

from edge_conformer.export.workers import (
    UTTERANCES_PER_TASK,
    NonfiniteTally,
    fp16_logits,
    usable_workers,
)
from edge_conformer.runtime.windowing import one_by_one

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the gate forks workers on Linux only")


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    features: torch.Tensor


class CountingRecognizer:
    """A stand-in for the executor and its recogniser: logits from the features, and the
    non-finite values among them counted under the op type 'mul' and named by the utterance."""

    def __init__(self) -> None:
        self.reset_stats()

    def reset_stats(self) -> None:
        self.nonfinite_by_op_type: dict[str, int] = {}
        self.first_nonfinite_op: str | None = None

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        logits = features * 2 + float(torch.get_num_threads())  # one thread per worker
        overflowed = int((~torch.isfinite(logits)).sum())
        if overflowed:
            self.nonfinite_by_op_type["mul"] = overflowed
            self.first_nonfinite_op = f"op of utterance at {float(features[0, 1])}"
        return logits


def utterances() -> list[Utterance]:
    generator = torch.Generator().manual_seed(0)
    made = []
    for index in range(2 * UTTERANCES_PER_TASK + 7):  # not a multiple of the tasks' size
        features = torch.randn(5 + index % 7, 3, generator=generator)
        features[0, 1] = index
        if index in (6, UTTERANCES_PER_TASK + 3):
            features[1, 0] = float("inf")
        made.append(Utterance(f"u{index}", features))
    return made


def decode(workers: int) -> tuple[list[tuple[str, torch.Tensor]], NonfiniteTally]:
    recognizer = CountingRecognizer()
    tally = NonfiniteTally()
    decoded = [(utt.utt_id, logits) for utt, logits in
               fp16_logits(utterances(), one_by_one(recognizer), recognizer, tally, workers)]
    return decoded, tally


@linux_only
@pytest.mark.usefixtures("one_thread")
def test_workers_give_each_utterance_its_logits_in_order_and_the_same_counts() -> None:
    alone, alone_tally = decode(workers=1)
    forked, forked_tally = decode(workers=3)
    assert [utt_id for utt_id, _ in forked] == [f"u{index}" for index in range(len(utterances()))]
    for (_, expected), (_, got) in zip(alone, forked, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert forked_tally == alone_tally
    assert alone_tally.count == 2 and alone_tally.first_op == "op of utterance at 6.0"


@linux_only
def test_a_failing_utterance_fails_the_run_with_its_error() -> None:
    def broken(features: torch.Tensor) -> torch.Tensor:
        if features.shape[0] == 8:
            raise ValueError("no kernel for this utterance")
        return features

    recognizer = CountingRecognizer()
    with pytest.raises(ValueError, match="no kernel for this utterance"):
        list(fp16_logits(utterances(), one_by_one(broken), recognizer, NonfiniteTally(),
                         workers=2))


def test_workers_default_to_the_usable_cores_on_linux(monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr("edge_conformer.export.workers.usable_cores", lambda: 6)
    assert usable_workers(None) == 6 and usable_workers(2) == 2
    monkeypatch.setattr(sys, "platform", "darwin")
    assert usable_workers(None) == 1 and usable_workers(4) == 1

