"""The parity gate's FP16 decoding: utterances in batches, batches on forked workers.

The FP16 executor runs a package op by op in Python on one core: tens of milliseconds per
streaming chunk, most of it the cost of an op rather than its arithmetic, minutes per test
set. Two ways to spend less, both exact:

- Batches: `fp16_logits` hands UTTERANCES_PER_TASK utterances at a time to the package's
  batch recogniser, which runs them through the executor together (their windows, or their
  k-th chunks, stacked as rows of one call). Each row gives bit for bit what it gives alone
  (mil/executor.py).
- Workers: the batches go to `workers` processes forked from this one, each holding a copy
  of the same executor, and come back in the utterances' order.

So the transcripts, logits and non-finite counts are those of one utterance at a time in one
process (tests/test_export_workers.py); only `first_nonfinite_op`, where an overflow began,
is the first op that held one in the first batch that did, rather than the first
utterance's.

Fork, not spawn: the package's recogniser is a closure over the loaded executor, which a
forked child inherits as it is. Where fork is unsafe or missing (macOS, where Core ML's
frameworks are loaded, and Windows) the gate decodes in this process (`usable_workers`).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import numpy as np
import torch

from edge_conformer.runtime.windowing import BatchLogitsFn
from edge_conformer.training.threads import usable_cores

Utterance = TypeVar("Utterance", bound="HasFeatures")

# Utterances decoded together (the executor's batched calls share its cost per op among
# them: 3.2x less time per streamed utterance at 16 than at 1, benchmarks/RESULTS.md), and
# handed to a worker at a time.
UTTERANCES_PER_TASK = 16


class HasFeatures(Protocol):
    @property
    def features(self) -> torch.Tensor: ...


class NonfiniteCounter(Protocol):
    """What the FP16 executor (PackageExecutor) counts while it runs the package."""

    nonfinite_by_op_type: Mapping[str, int]
    first_nonfinite_op: str | None

    def reset_stats(self) -> None: ...


@dataclass
class NonfiniteTally:
    """The executor's non-finite counts summed over utterances in their order: what one
    executor running them one after another would have counted."""

    by_op_type: dict[str, int] = field(default_factory=dict)
    first_op: str | None = None

    @property
    def count(self) -> int:
        return sum(self.by_op_type.values())

    def add(self, by_op_type: dict[str, int], first_op: str | None) -> None:
        for op_type, count in by_op_type.items():
            self.by_op_type[op_type] = self.by_op_type.get(op_type, 0) + count
        if self.first_op is None:
            self.first_op = first_op


def usable_workers(requested: int | None) -> int:
    """The worker processes the gate decodes on: `requested`, or (None) one per usable core;
    1 (this process) where fork is unsafe or missing (see the module doc)."""
    if not sys.platform.startswith("linux"):
        return 1
    return max(1, requested if requested is not None else usable_cores())


# The job a forked worker runs: set in the parent just before the fork, inherited by the child.
_job: tuple[BatchLogitsFn, NonfiniteCounter] | None = None

Decoded = tuple[list[np.ndarray], dict[str, int], str | None]


def _run_task(fp16: BatchLogitsFn, executor: NonfiniteCounter, features: list[torch.Tensor]
              ) -> Decoded:
    """One task's utterances decoded together, and what the executor counted meanwhile."""
    executor.reset_stats()
    # One intra-op thread, wherever it runs: torch's convolutions (the executor's conv
    # kernel) sum in another order on more threads, so FP16 outputs could differ by an ulp
    # with the number of threads, and with it the gate's results with export.workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logits = fp16(features)
    finally:
        torch.set_num_threads(threads)
    return ([rows.numpy() for rows in logits], dict(executor.nonfinite_by_op_type),
            executor.first_nonfinite_op)


def _run_in_worker(features: list[np.ndarray]) -> Decoded:
    assert _job is not None, "a parity worker started without its job"
    return _run_task(*_job, [torch.from_numpy(rows) for rows in features])


def _init_worker() -> None:
    # One thread per worker: the workers are the parallelism, and an OpenMP team inherited
    # across fork must not be used.
    torch.set_num_threads(1)


def _tasks(utterances: Iterable[Utterance], pending: deque[Utterance], per_task: int
           ) -> Iterator[list[torch.Tensor]]:
    """The utterances' features, `per_task` at a time; each utterance is queued on `pending`
    as it is read, for its result to be paired with it in order."""
    task: list[torch.Tensor] = []
    for utt in utterances:
        pending.append(utt)
        task.append(utt.features)
        if len(task) == per_task:
            yield task
            task = []
    if task:
        yield task


def fp16_logits(
    utterances: Iterable[Utterance], fp16: BatchLogitsFn, executor: NonfiniteCounter,
    tally: NonfiniteTally, workers: int = 1, per_task: int = UTTERANCES_PER_TASK,
) -> Iterator[tuple[Utterance, torch.Tensor]]:
    """Each utterance with its `fp16` logits, in order, computed `per_task` at a time on
    `workers` processes (1: here); the non-finite values `executor` counts on the way go
    into `tally`."""
    pending: deque[Utterance] = deque()
    tasks = _tasks(utterances, pending, per_task)
    if workers <= 1:
        yield from _paired(map(partial(_run_task, fp16, executor), tasks), pending, tally)
        return
    global _job
    _job = (fp16, executor)
    try:
        # The pool reads the tasks in a thread of its own, ahead of the results: the lazy
        # utterances (FP32 references, features) are computed there while workers decode.
        with multiprocessing.get_context("fork").Pool(workers, _init_worker) as pool:
            # As NumPy arrays both ways: torch would pass tensors through shared memory and
            # file descriptors, whose hand-over thread a pool's closing can cut short.
            as_arrays = ([features.numpy() for features in task] for task in tasks)
            yield from _paired(pool.imap(_run_in_worker, as_arrays), pending, tally)
    finally:
        _job = None


def _paired(results: Iterable[Decoded], pending: deque[Utterance], tally: NonfiniteTally
            ) -> Iterator[tuple[Utterance, torch.Tensor]]:
    for logits, by_op_type, first_op in results:
        tally.add(by_op_type, first_op)
        for rows in logits:
            yield pending.popleft(), torch.from_numpy(rows)
