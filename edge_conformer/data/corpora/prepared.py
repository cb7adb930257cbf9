"""What every corpus preparer shares: the "prepared" stamp, atomic writes, the bad-data loop.

A preparer writes cut manifests into its output directory, each with the settings that define
it recorded in that directory's prepared.json ({manifest file name: settings}). A later
preparation reuses a manifest, untouched, when it exists and its recorded settings equal the
new ones, and rebuilds it otherwise. Manifests and the stamp are written to a temporary name and
renamed into place: the ranks of a multi-node job may all prepare at once, and none may read a
half-written file. A directory prepared before this scheme (its prepared.json held the settings
alone) is rebuilt once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from lhotse import CutSet

from edge_conformer.data.audio import BadAudioError
from edge_conformer.data.manifests import BAD_DATA_POLICIES, BadTranscriptError

log = logging.getLogger(__name__)

STAMP_FILE = "prepared.json"
Item = TypeVar("Item")
Usable = TypeVar("Usable")


def _temporary_twin(path: Path) -> Path:
    """A hidden name beside `path` with the same suffixes (lhotse picks gzip by them), unique
    per process so that concurrent preparers never write the same temporary file."""
    return path.with_name(f".tmp-{os.getpid()}.{path.name}")


def atomic_write_text(path: Path, text: str) -> Path:
    tmp = _temporary_twin(path)
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_cuts_atomically(cuts: CutSet, path: Path) -> Path:
    tmp = _temporary_twin(path)
    cuts.to_file(tmp)
    tmp.replace(path)
    return path


def _as_json(settings: Mapping[str, Any]) -> Any:
    """Settings as they read back from the stamp (tuples become lists, paths must be str)."""
    return json.loads(json.dumps(settings))


def _stamps(out_dir: Path) -> dict[str, Any]:
    """The recorded settings of every manifest in `out_dir` (none if the stamp is missing,
    unreadable or from the previous scheme: those manifests are rebuilt)."""
    try:
        stamps = json.loads((out_dir / STAMP_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def is_prepared(manifest: Path, settings: Mapping[str, Any]) -> bool:
    """Whether `manifest` exists and was prepared with exactly `settings`."""
    recorded = _stamps(manifest.parent).get(manifest.name)
    return manifest.is_file() and recorded == _as_json(settings)


def mark_prepared(manifest: Path, settings: Mapping[str, Any]) -> None:
    """Record that `manifest` (already written) was prepared with `settings`."""
    stamps = _stamps(manifest.parent)
    stamps[manifest.name] = _as_json(settings)
    atomic_write_text(manifest.parent / STAMP_FILE, json.dumps(stamps, indent=2) + "\n")


def write_prepared(cuts: CutSet, manifest: Path, settings: Mapping[str, Any]) -> Path:
    """Write `cuts` to `manifest` and record its settings, both atomically; returns `manifest`."""
    write_cuts_atomically(cuts, manifest)
    mark_prepared(manifest, settings)
    return manifest


def keep_usable(
    items: Iterable[Item], use: Callable[[Item], Usable], on_bad_data: str, what: str
) -> list[Usable]:
    """`use(item)` for every item it accepts. An item it rejects (BadAudioError or
    BadTranscriptError, naming the file) stops preparation (`on_bad_data="error"`) or is logged
    and counted (`"skip"`); if none is left, that is an error, never an empty corpus."""
    if on_bad_data not in BAD_DATA_POLICIES:
        raise ValueError(f"on_bad_data must be one of {BAD_DATA_POLICIES}, got {on_bad_data!r}")
    kept, skipped = [], 0
    for item in items:
        try:
            kept.append(use(item))
        except (BadAudioError, BadTranscriptError) as err:
            if on_bad_data == "error":
                raise
            log.warning("skipping %s", err)
            skipped += 1
    if skipped:
        log.warning("skipped %d of %d %s with bad data", skipped, skipped + len(kept), what)
    if not kept:
        raise ValueError(f"no usable {what}: every one was rejected (see the log above)")
    return kept
