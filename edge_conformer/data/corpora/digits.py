"""Multi-digit utterances built from the real Free Spoken Digit Dataset (FSDD).

FSDD holds single digits (0-9) spoken by six speakers, 50 takes each, 8 kHz mono. We splice
2 to 8 takes of one speaker with short random silences into sentences like "three one four",
so a model has to segment and recognise connected real speech.

Splits (one speaker is held out of training entirely):
- train: the other speakers' takes with index 5-49;
- dev: new compositions of the same training takes (for monitoring and checkpoint choice);
- test: the other speakers' takes with index 0-4 (the dataset's own test split);
- unseen_speaker: the held-out speaker's takes.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_conformer.data.audio import BadAudioError, check_audio_file
from edge_conformer.data.corpora.prepared import is_prepared, keep_usable, write_prepared
from edge_conformer.data.manifests import Utterance, build_cuts

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_SAMPLE_RATE = 8000
FSDD_ARCHIVE_URL = (
    "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
)
TAKE_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class DigitsSplitSpec:
    name: str
    num_utterances: int
    speakers: tuple[str, ...]
    take_indices: tuple[int, ...]


@dataclass(frozen=True)
class Take:
    digit: int
    speaker: str
    index: int
    path: Path


def ensure_fsdd(fsdd_dir: str | Path, download_dir: str | Path) -> Path:
    """A local FSDD copy: `fsdd_dir` if it holds recordings, else one downloaded once."""
    fsdd_dir = Path(fsdd_dir)
    if (fsdd_dir / "recordings").is_dir():
        return fsdd_dir
    target = Path(download_dir) / "fsdd"
    if (target / "recordings").is_dir():
        return target
    log.info("%s has no recordings/: downloading FSDD to %s", fsdd_dir, target)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "fsdd.zip"
        urllib.request.urlretrieve(FSDD_ARCHIVE_URL, archive)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        (extracted,) = Path(tmp).glob("free-spoken-digit-dataset-*")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(extracted), target)
    return target


def _checked_take(path: Path) -> Take:
    check_audio_file(path)
    digit, speaker, index = TAKE_NAME.match(path.name).groups()
    return Take(int(digit), speaker, int(index), path)


def scan_takes(fsdd_dir: Path) -> list[Take]:
    """Every usable take in fsdd_dir/recordings; unusable files are logged and counted."""
    paths = [p for p in sorted((fsdd_dir / "recordings").glob("*.wav")) if TAKE_NAME.match(p.name)]
    if not paths:
        raise FileNotFoundError(f"{fsdd_dir}/recordings: no FSDD recordings found")
    return keep_usable(paths, _checked_take, on_bad_data="skip", what="FSDD recordings")


def _read_take(take: Take) -> np.ndarray:
    samples, rate = sf.read(str(take.path), dtype="float32", always_2d=True)
    if rate != FSDD_SAMPLE_RATE:
        raise BadAudioError(f"{take.path}: expected {FSDD_SAMPLE_RATE} Hz, found {rate} Hz")
    return samples.mean(axis=1)


def _silence(rng: random.Random, low: float, high: float) -> np.ndarray:
    return np.zeros(int(rng.uniform(low, high) * FSDD_SAMPLE_RATE), dtype=np.float32)


def plan_split(
    spec: DigitsSplitSpec, takes: list[Take], rng: random.Random, min_digits: int, max_digits: int
) -> list[list[Take]]:
    """The takes of each utterance of a split: one speaker per utterance, speakers in turn."""
    by_speaker: dict[str, list[Take]] = {}
    for take in takes:
        if take.speaker in spec.speakers and take.index in spec.take_indices:
            by_speaker.setdefault(take.speaker, []).append(take)
    if not by_speaker:
        raise ValueError(f"split {spec.name}: no FSDD takes for speakers {spec.speakers}")
    speakers = sorted(by_speaker)
    return [
        rng.choices(by_speaker[speakers[n % len(speakers)]], k=rng.randint(min_digits, max_digits))
        for n in range(spec.num_utterances)
    ]


def write_split(
    name: str, plan: list[list[Take]], out_dir: Path, rng: random.Random,
    gap_seconds: tuple[float, float],
) -> list[Utterance]:
    """Splice each planned utterance's takes with random silences into a WAV file."""
    audio_dir = out_dir / name
    audio_dir.mkdir(parents=True, exist_ok=True)
    utterances = []
    for n, chosen in enumerate(plan):
        pieces = [_silence(rng, 0.05, 0.2)]
        for take in chosen:
            pieces += [_read_take(take), _silence(rng, *gap_seconds)]
        utt_id = f"digits-{name}-{n:05d}"
        path = audio_dir / f"{utt_id}.wav"
        sf.write(str(path), np.concatenate(pieces), FSDD_SAMPLE_RATE, subtype="PCM_16")
        text = " ".join(DIGIT_WORDS[t.digit] for t in chosen)
        utterances.append(Utterance(utt_id, path, text, chosen[0].speaker))
    return utterances


def prepare_digits(
    fsdd_dir: str | Path,
    out_dir: str | Path,
    unseen_speaker: str = "theo",
    num_train: int = 3000,
    num_dev: int = 200,
    num_test: int = 200,
    num_unseen: int = 200,
    min_digits: int = 2,
    max_digits: int = 8,
    gap_seconds: tuple[float, float] = (0.05, 0.3),
    seed: int = 0,
) -> dict[str, Path]:
    """Compose the digits corpus into `out_dir`; returns split name -> cut manifest path.

    Idempotent: a finished preparation with the same settings is reused as it is.
    """
    out_dir = Path(out_dir).resolve()  # manifests hold absolute audio paths
    gap_seconds = (float(gap_seconds[0]), float(gap_seconds[1]))
    manifests = {name: out_dir / f"cuts_{name}.jsonl.gz"
                 for name in ("train", "dev", "test", "unseen_speaker")}
    # What defines the corpus (not where FSDD lies).
    settings = {
        "unseen_speaker": unseen_speaker, "num_train": num_train, "num_dev": num_dev,
        "num_test": num_test, "num_unseen": num_unseen, "min_digits": min_digits,
        "max_digits": max_digits, "gap_seconds": gap_seconds, "seed": seed,
    }
    # All or nothing: the splits draw from one random sequence, in order.
    if all(is_prepared(manifest, settings) for manifest in manifests.values()):
        return manifests

    fsdd = ensure_fsdd(fsdd_dir, out_dir.parent)
    takes = scan_takes(fsdd)
    speakers = sorted({t.speaker for t in takes})
    if unseen_speaker not in speakers:
        raise ValueError(f"unseen_speaker {unseen_speaker!r} is not in {fsdd}: {speakers}")
    seen = tuple(s for s in speakers if s != unseen_speaker)
    train_takes = tuple(range(5, 50))
    specs = [
        DigitsSplitSpec("train", num_train, seen, train_takes),
        DigitsSplitSpec("dev", num_dev, seen, train_takes),
        DigitsSplitSpec("test", num_test, seen, tuple(range(5))),
        DigitsSplitSpec("unseen_speaker", num_unseen, (unseen_speaker,), tuple(range(50))),
    ]
    rng = random.Random(seed)
    for spec in specs:
        plan = plan_split(spec, takes, rng, min_digits, max_digits)
        utterances = write_split(spec.name, plan, out_dir, rng, gap_seconds)
        write_prepared(build_cuts(utterances, on_bad_data="error"), manifests[spec.name], settings)
        log.info("digits %s: %d utterances", spec.name, len(utterances))
    return manifests



