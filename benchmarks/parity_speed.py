"""The parity gate's FP16 decoding: one utterance at a time vs batches vs batches on workers.

The gate's minutes go to the FP16 executor running each package over every test utterance
(export/workers.py). This times that part alone, on an export directory's packages and a
test set's first `--utterances` utterances, three ways in the same run:

- one utterance at a time in this process (the gate before batches and workers);
- `--per-task` (16) utterances per executor call, in this process;
- the same batches on `--workers` (the usable cores) forked processes (the gate's default).

Each way decodes the same utterances; the script checks the logits agree bit for bit and
reports seconds and utterances per second per package (model.mlpackage window by window,
stream.mlpackage chunk by chunk). The features are computed once, before the timing.

    python benchmarks/parity_speed.py exports/digits-xs data/digits/cuts_test.jsonl.gz
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from lhotse import load_manifest_lazy
from rich.console import Console
from rich.table import Table

from edge_conformer.export.parity import EvalUtterance, featurised_utterances
from edge_conformer.export.workers import (
    UTTERANCES_PER_TASK,
    NonfiniteTally,
    fp16_logits,
    usable_workers,
)
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.runtime.bundle import Bundle, executor_batch_logits, load_bundle
from edge_conformer.runtime.stream_package import StreamPackage, stream_package_logits_of
from edge_conformer.runtime.windowing import BatchLogitsFn


def package_recognizers(bundle: Bundle, mode: str) -> dict[str, tuple[BatchLogitsFn,
                                                                        PackageExecutor]]:
    """Each package of the export: its batch recogniser in the executor, and the executor."""
    windowed = PackageExecutor(bundle.package, mode=mode)
    packages = {bundle.package.name: (executor_batch_logits(bundle, windowed), windowed)}
    if bundle.streaming is not None:
        path = bundle.directory / bundle.streaming["package"]
        streaming = PackageExecutor(path, mode=mode)
        chunk_loop = StreamPackage(lambda inputs: streaming(**inputs), bundle.streaming)
        packages[path.name] = (partial(stream_package_logits_of, chunk_loop), streaming)
    return packages


def timed(decode: Callable[[], list[torch.Tensor]]) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    logits = decode()
    return time.perf_counter() - start, logits


def decode_all(utterances: list[EvalUtterance], fp16: BatchLogitsFn, executor: PackageExecutor,
               workers: int, per_task: int) -> list[torch.Tensor]:
    return [logits for _, logits in fp16_logits(utterances, fp16, executor, NonfiniteTally(),
                                                workers=workers, per_task=per_task)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir")
    parser.add_argument("cuts", help="a test set's lhotse cuts manifest")
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--per-task", type=int, default=UTTERANCES_PER_TASK)
    parser.add_argument("--workers", type=int, default=None, help="default: the usable cores")
    parser.add_argument("--mode", default="fp16-strict")
    args = parser.parse_args()

    bundle = load_bundle(args.export_dir)
    cuts = load_manifest_lazy(args.cuts).subset(first=args.utterances)
    utterances = list(featurised_utterances(cuts, bundle.features))
    seconds_of_audio = sum(cut.duration for cut in cuts)
    workers = usable_workers(args.workers)
    ways = {
        "one at a time": (1, 1),
        f"{args.per_task} per call": (1, args.per_task),
        f"{args.per_task} per call, {workers} workers": (workers, args.per_task),
    }
    table = Table(title=f"FP16 executor ({args.mode}) over {len(utterances)} utterances "
                        f"({seconds_of_audio:.0f} s of audio), {args.cuts}")
    for column in ("package", "way", "seconds", "utterances / s", "speed-up", "same logits"):
        table.add_column(column)
    for name, (fp16, executor) in package_recognizers(bundle, args.mode).items():
        baseline, reference = None, None
        for way, (way_workers, per_task) in ways.items():
            seconds, logits = timed(
                partial(decode_all, utterances, fp16, executor, way_workers, per_task))
            baseline = baseline or seconds
            reference = reference or logits
            same = all(torch.equal(a, b) for a, b in zip(reference, logits, strict=True))
            table.add_row(name, way, f"{seconds:.1f}", f"{len(utterances) / seconds:.1f}",
                          f"{baseline / seconds:.1f}x", "yes" if same else "NO")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
