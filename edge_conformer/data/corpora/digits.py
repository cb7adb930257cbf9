"""Multi-digit utterances built from the real Free Spoken Digit Dataset (FSDD).

FSDD holds single digits (0-9) spoken by six speakers, 50 takes each, 8 kHz mono. We splice
2 to 8 takes of one speaker with short random silences into sentences like "three one four",
so a model has to segment and recognise connected real speech.

Splits (one speaker is held out of training entirely):
- train: the other speakers' takes with index 5-49;
- dev: new compositions of the same training takes (for monitoring and checkpoint choice);
- test: the other speakers' takes with index 0-4 (the dataset's own test split);
- unseen_speaker: the held-out speaker's takes;
- new_voices: digits synthesised by eSpeak NG in women's and men's voices of several English
  accents, pitches and rates (edge_conformer/data/corpora/voices.py), spliced the same way;
  prepared with its own random sequence and stamp, and skipped (one log line) where no
  synthesiser is installed.

Each supervision records where each digit's take lies in the spliced audio
(alignment["word"]).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf
import torch
import torchaudio
from lhotse.supervision import AlignmentItem

from edge_conformer.data.audio import BadAudioError, check_audio_file
from edge_conformer.data.corpora import voices
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


@dataclass(frozen=True, eq=False)
class SpokenDigit:
    """A synthesised digit: its audio at FSDD_SAMPLE_RATE."""

    digit: int
    speaker: str
    audio: np.ndarray


class DigitAudio(Protocol):
    digit: int
    speaker: str


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
    name: str, plan: Sequence[Sequence[DigitAudio]], out_dir: Path, rng: random.Random,
    gap_seconds: tuple[float, float], read: Callable[[DigitAudio], np.ndarray] = _read_take,
) -> list[Utterance]:
    """Splice each planned utterance's takes (their audio from `read`) with random silences
    into a WAV file; each digit word is aligned to its take's place in the file."""
    audio_dir = out_dir / name
    audio_dir.mkdir(parents=True, exist_ok=True)
    utterances = []
    for n, chosen in enumerate(plan):
        pieces = [_silence(rng, 0.05, 0.2)]
        words, offset = [], len(pieces[0])
        for take in chosen:
            samples, gap = read(take), _silence(rng, *gap_seconds)
            words.append(AlignmentItem(symbol=DIGIT_WORDS[take.digit],
                                       start=offset / FSDD_SAMPLE_RATE,
                                       duration=len(samples) / FSDD_SAMPLE_RATE))
            pieces += [samples, gap]
            offset += len(samples) + len(gap)
        utt_id = f"digits-{name}-{n:05d}"
        path = audio_dir / f"{utt_id}.wav"
        sf.write(str(path), np.concatenate(pieces), FSDD_SAMPLE_RATE, subtype="PCM_16")
        text = " ".join(word.symbol for word in words)
        utterances.append(Utterance(utt_id, path, text, chosen[0].speaker, tuple(words)))
    return utterances


def plan_new_voices(
    num_utterances: int, rng: random.Random, min_digits: int, max_digits: int
) -> list[tuple[voices.Voice, list[int]]]:
    """Each utterance's voice and digits: women's and men's variants in turn, accent, pitch
    and rate drawn."""
    plan = []
    for n in range(num_utterances):
        variants = voices.FEMALE_VARIANTS if n % 2 == 0 else voices.MALE_VARIANTS
        voice = voices.Voice(rng.choice(voices.ACCENTS), rng.choice(variants),
                             rng.randint(*voices.PITCH_RANGE), rng.randint(*voices.RATE_RANGE))
        plan.append((voice, [rng.randrange(10) for _ in range(rng.randint(min_digits,
                                                                         max_digits))]))
    return plan


def synthesize_plan(plan: list[tuple[voices.Voice, list[int]]]) -> list[list[SpokenDigit]]:
    """Each planned digit synthesised on its own (so its place in the utterance is known) and
    resampled to FSDD's rate."""
    requests = [voices.Request(DIGIT_WORDS[d], voice) for voice, digits in plan for d in digits]
    audio, rate = voices.synthesize(requests)
    resample = torchaudio.transforms.Resample(rate, FSDD_SAMPLE_RATE)
    spoken = iter(resample(torch.from_numpy(a)).numpy() for a in audio)
    return [[SpokenDigit(d, voice.speaker, next(spoken)) for d in digits]
            for voice, digits in plan]


def prepare_new_voices(
    out_dir: Path, num_utterances: int, min_digits: int, max_digits: int,
    gap_seconds: tuple[float, float], seed: int,
) -> Path | None:
    """The new_voices split's manifest (None where it is off or no synthesiser is installed),
    drawn from its own random sequence: the FSDD splits do not change with it."""
    if not num_utterances:
        return None
    synthesizer = voices.synthesizer()
    if synthesizer is None:
        log.warning("digits new_voices: skipped, no speech synthesiser installed (%s)",
                    voices.HOW_TO_GET)
        return None
    manifest = out_dir / "cuts_new_voices.jsonl.gz"
    settings = {
        "num_new_voices": num_utterances, "min_digits": min_digits, "max_digits": max_digits,
        "gap_seconds": gap_seconds, "seed": seed, "synthesizer": synthesizer,
        "voices": voices.settings(),
    }
    if is_prepared(manifest, settings):
        return manifest
    rng = random.Random(f"new_voices:{seed}")
    plan = synthesize_plan(plan_new_voices(num_utterances, rng, min_digits, max_digits))
    utterances = write_split("new_voices", plan, out_dir, rng, gap_seconds,
                             read=lambda spoken: spoken.audio)
    write_prepared(build_cuts(utterances, on_bad_data="error"), manifest, settings)
    log.info("digits new_voices: %d utterances (%s)", len(utterances), synthesizer)
    return manifest


def prepare_digits(
    fsdd_dir: str | Path,
    out_dir: str | Path,
    unseen_speaker: str = "theo",
    num_train: int = 3000,
    num_dev: int = 200,
    num_test: int = 200,
    num_unseen: int = 200,
    num_new_voices: int = 200,
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
    manifests = prepare_fsdd_splits(fsdd_dir, out_dir, unseen_speaker, num_train, num_dev,
                                    num_test, num_unseen, min_digits, max_digits, gap_seconds,
                                    seed)
    new_voices = prepare_new_voices(out_dir, num_new_voices, min_digits, max_digits,
                                    gap_seconds, seed)
    return manifests | ({"new_voices": new_voices} if new_voices else {})


def prepare_fsdd_splits(
    fsdd_dir: str | Path, out_dir: Path, unseen_speaker: str, num_train: int, num_dev: int,
    num_test: int, num_unseen: int, min_digits: int, max_digits: int,
    gap_seconds: tuple[float, float], seed: int,
) -> dict[str, Path]:
    """The four splits of FSDD takes (train, dev, test, unseen_speaker)."""
    manifests = {name: out_dir / f"cuts_{name}.jsonl.gz"
                 for name in ("train", "dev", "test", "unseen_speaker")}
    # What defines the corpus (not where FSDD lies).
    settings = {
        "unseen_speaker": unseen_speaker, "num_train": num_train, "num_dev": num_dev,
        "num_test": num_test, "num_unseen": num_unseen, "min_digits": min_digits,
        "max_digits": max_digits, "gap_seconds": gap_seconds, "seed": seed,
        "alignments": "word",  # what the manifests hold beyond the audio and its text
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



