"""Read a run's offline W&B files without W&B: its group and its summary.

An offline run (`<run dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb`) is a LevelDB-style
log of protobuf `Record`s: a 7-byte file header, then 32 KiB blocks of records, each with a
7-byte header (CRC32C, length, type) and split into FIRST/MIDDLE/LAST fragments where it
crosses a block. W&B's Python package no longer ships a reader (its core is in Go), so
tools/compare_runs.py reads them here. A run resumed by id (train.py after a kill, export.py
adding its parity numbers) leaves one offline directory per session: they are merged in order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

FILE_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little-endian), version 0
BLOCK_BYTES = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")  # CRC32C, data length, fragment type
FULL, LAST = 1, 4  # fragment types that end a record (FIRST = 2 and MIDDLE = 3 only add to it)


@dataclass
class OfflineRun:
    run_id: str
    group: str = ""
    summary: dict = field(default_factory=dict)


def read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of one `.wandb` file, in order."""
    data = Path(path).read_bytes()
    if not data.startswith(FILE_HEADER):
        raise ValueError(f"{path}: not a W&B run file (no {FILE_HEADER!r} header)")
    position, fragments = len(FILE_HEADER), b""
    while position + RECORD_HEADER.size <= len(data):
        block_left = BLOCK_BYTES - position % BLOCK_BYTES
        if block_left < RECORD_HEADER.size:  # a block's tail too short for a header: padding
            position += block_left
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, position)
        if kind == 0:  # zero padding up to the end of the block (a file still being written)
            position += block_left
            continue
        start = position + RECORD_HEADER.size
        fragments += data[start:start + length]
        position = start + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(fragments)
            fragments = b""
            yield record


def read_offline_run(run_dir: Path) -> OfflineRun | None:
    """The W&B run logged under `run_dir`/wandb (merged over its sessions), if there is one."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))  # by start time
    if not files:
        return None
    run = OfflineRun(run_id=files[0].stem.removeprefix("run-"))
    for path in files:
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run" and record.run.run_group:
                run.group = record.run.run_group
            elif kind == "summary":
                for item in record.summary.update:
                    key = item.key or "/".join(item.nested_key)
                    run.summary[key] = json.loads(item.value_json)
    return run
