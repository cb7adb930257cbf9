"""Build and load lhotse CutSets, validating every file on the way in.

A corpus preparer hands over `Utterance` records; `build_cuts` checks each one and either
raises (`on_bad_data="error"`) or logs and counts it as skipped (`"skip"`). Either way the
message names the file and the problem, and nothing already prepared is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.supervision import AlignmentItem

from edge_conformer.data.audio import BadAudioError, check_audio_file

log = logging.getLogger(__name__)

BAD_DATA_POLICIES = ("error", "skip")


class BadTranscriptError(ValueError):
    """An utterance without a usable transcript."""


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    audio_path: Path
    text: str | None
    speaker: str | None = None
    # Where each word lies in the audio (seconds), where the preparer knows it: the
    # supervision's alignment["word"].
    words: tuple[AlignmentItem, ...] = ()


def _checked_recording(utt: Utterance) -> Recording:
    check_audio_file(utt.audio_path)
    if utt.text is None or not utt.text.strip():
        raise BadTranscriptError(f"{utt.audio_path}: missing or empty transcript for {utt.utt_id}")
    return Recording.from_file(utt.audio_path, recording_id=utt.utt_id)


def build_cuts(utterances: Iterable[Utterance], on_bad_data: str = "skip") -> CutSet:
    """Validated CutSet (one supervision per recording) from utterance records."""
    if on_bad_data not in BAD_DATA_POLICIES:
        raise ValueError(f"on_bad_data must be one of {BAD_DATA_POLICIES}, got {on_bad_data!r}")
    recordings, supervisions, skipped = [], [], []
    for utt in utterances:
        try:
            recording = _checked_recording(utt)
        except (BadAudioError, BadTranscriptError) as err:
            if on_bad_data == "error":
                raise
            log.warning("skipping %s", err)
            skipped.append(str(err))
            continue
        recordings.append(recording)
        supervisions.append(
            SupervisionSegment(
                id=utt.utt_id, recording_id=utt.utt_id, start=0.0,
                duration=recording.duration, text=utt.text.strip(), speaker=utt.speaker,
                alignment={"word": list(utt.words)} if utt.words else None,
            )
        )
    if skipped:
        log.warning("skipped %d of %d utterances with bad data", len(skipped),
                    len(skipped) + len(recordings))
    if not recordings:
        raise ValueError("no usable utterances: every file was rejected (see the log above)")
    cuts = CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(recordings),
        supervisions=SupervisionSet.from_segments(supervisions),
    )
    # One cut per recording: name it after the utterance rather than lhotse's "<id>-<n>".
    return cuts.modify_ids(lambda cut_id: cut_id.rsplit("-", 1)[0])


def load_cuts(path: str | Path) -> CutSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cut manifest not found (run the recipe's prepare step)")
    return CutSet.from_file(path)


def cut_text(cut) -> str:
    """The transcript of a cut: its supervisions' texts joined in time order."""
    return " ".join(s.text for s in sorted(cut.supervisions, key=lambda s: s.start) if s.text)
