"""Any lhotse corpus, by manifest paths (`data=lhotse`).

lhotse has recipes for dozens of corpora (`lhotse prepare <corpus> ...`); they write recording
and supervision manifests, and tools like icefall write cut manifests. This preparer takes
either per role (train, dev, each test set), combines each role's manifests into one cut
manifest, cuts long recordings to their supervised segments, and applies the same bad-data
policy as `build_cuts`: a cut whose audio file is missing, empty or unreadable, or whose
transcript is empty, stops preparation with a message naming it (`error`) or is logged and
counted as skipped (`skip`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

from edge_conformer.data.audio import check_audio_file
from edge_conformer.data.corpora.prepared import is_prepared, keep_usable, write_prepared
from edge_conformer.data.manifests import BadTranscriptError, cut_text

log = logging.getLogger(__name__)


def supervisions_beside(recordings_path: Path) -> Path:
    """lhotse recipes name the pair <corpus>_recordings_<part> / <corpus>_supervisions_<part>."""
    path = recordings_path.with_name(recordings_path.name.replace("recordings", "supervisions"))
    if path == recordings_path or not path.is_file():
        raise FileNotFoundError(f"{recordings_path}: no supervisions manifest beside it ({path})")
    return path


def manifest_cuts(path: str | Path) -> CutSet:
    """Cuts of one manifest: a cut manifest as it is, or recordings + supervisions cut to the
    supervised segments (one supervision per cut, as CTC training wants)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    manifest = load_manifest(path)
    if isinstance(manifest, CutSet):
        return manifest
    if isinstance(manifest, RecordingSet):
        supervisions = load_manifest(supervisions_beside(path))
        assert isinstance(supervisions, SupervisionSet)
        cuts = CutSet.from_manifests(recordings=manifest, supervisions=supervisions)
        return cuts.trim_to_supervisions(keep_overlapping=False)
    raise ValueError(f"{path}: expected a cut or recording manifest, got {type(manifest).__name__}")


@cache
def _checked_file(path: str) -> None:
    check_audio_file(path)  # once per file: many cuts may share a long recording


def check_cut(cut):
    """The cut, or BadAudioError / BadTranscriptError naming its file if it is unusable."""
    if not cut_text(cut).strip():
        raise BadTranscriptError(f"{cut.id}: missing or empty transcript")
    if cut.has_recording:
        for source in cut.recording.sources:
            if source.type == "file":  # URLs, commands and in-memory audio are checked on load
                _checked_file(str(source.source))
    return cut


def checked_cuts(cuts: Iterable, on_bad_data: str = "skip") -> CutSet:
    """The usable cuts; unusable ones raise (`error`) or are logged and counted (`skip`)."""
    return CutSet.from_cuts(keep_usable(cuts, check_cut, on_bad_data, what="cuts"))


def _lowercased(cuts: CutSet) -> CutSet:
    return cuts.map_supervisions(lambda s: s.transform_text(str.lower))


def prepare_lhotse_manifests(
    out_dir: str | Path,
    train_manifests: Sequence[str],
    dev_manifests: Sequence[str],
    test_manifests: Mapping[str, Sequence[str]],
    lowercase: bool = False,
    on_bad_data: str = "skip",
) -> dict[str, Path]:
    """One checked cut manifest per role in `out_dir`: `train`, `dev` and each test set.
    Idempotent: a role is rebuilt only when its inputs or the settings change."""
    out_dir = Path(out_dir).resolve()
    roles = {"train": list(train_manifests), "dev": list(dev_manifests),
             **{name: list(paths) for name, paths in test_manifests.items()}}
    roles = {role: [str(Path(p).resolve()) for p in paths] for role, paths in roles.items()}
    manifests = {role: out_dir / f"cuts_{role}.jsonl.gz" for role in roles}
    out_dir.mkdir(parents=True, exist_ok=True)
    for role, paths in roles.items():
        settings = {"manifests": paths, "lowercase": lowercase, "on_bad_data": on_bad_data}
        if is_prepared(manifests[role], settings):
            continue
        cuts = CutSet.from_cuts(cut for path in paths for cut in manifest_cuts(path))
        if lowercase:
            cuts = _lowercased(cuts)
        cuts = checked_cuts(cuts, on_bad_data)
        write_prepared(cuts, manifests[role], settings)
        log.info("%s: %d cuts, %.1f h", role, len(cuts), sum(c.duration for c in cuts) / 3600)
    return manifests
