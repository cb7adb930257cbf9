"""LibriSpeech from a local copy in the official layout (downloaded only when asked).

    <corpus_dir>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac
    <corpus_dir>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

We read the layout ourselves rather than through lhotse's `prepare_librispeech` so that every
utterance passes our `build_cuts` checks (a corrupt or empty FLAC, or a FLAC without a
transcript line, gives an error naming the file or a logged, counted skip) and cuts follow our
conventions (cut id = utterance id, one supervision, lower-cased text). lhotse still does the
downloading (`download_librispeech`) and everything downstream.

The preparer writes one cut manifest per LibriSpeech split, plus one per role that the
`SpeechDataModule` reads: `train` (all `train_splits` together), `dev` (all `dev_splits`), and
each test split under its own name. Changing the split lists rewrites only the role manifests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from lhotse import CutSet

from edge_conformer.data.corpora.prepared import is_prepared, write_prepared
from edge_conformer.data.manifests import Utterance, build_cuts

log = logging.getLogger(__name__)

LIBRISPEECH_SPLITS = (
    "train-clean-100", "train-clean-360", "train-other-500",
    "dev-clean", "dev-other", "test-clean", "test-other",
)
# Utterances validated per worker task when num_jobs > 1 (large enough to amortise start-up).
CHUNK_SIZE = 2000


def read_split(split_dir: Path, lowercase: bool = True) -> list[Utterance]:
    """Utterance records of one split directory; text None where a transcript is missing.

    A transcript line without its FLAC gives a record whose audio file does not exist, and a
    FLAC without a transcript line one without text: `build_cuts` reports both by file name.
    """
    utterances = []
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        texts: dict[str, str | None] = {}
        for line in trans.read_text().splitlines():
            utt_id, _, text = line.strip().partition(" ")
            if utt_id:
                texts[utt_id] = text.lower() if lowercase else text
        for flac in trans.parent.glob("*.flac"):
            texts.setdefault(flac.stem, None)
        speaker = trans.parent.parent.name
        utterances += [Utterance(utt_id, trans.parent / f"{utt_id}.flac", text, speaker)
                       for utt_id, text in sorted(texts.items())]
    if not utterances:
        raise FileNotFoundError(f"{split_dir}: no <speaker>/<chapter>/*.trans.txt found")
    return utterances


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def split_cuts(
    split_dir: Path, lowercase: bool = True, on_bad_data: str = "skip", num_jobs: int = 1
) -> CutSet:
    """Validated cuts of one LibriSpeech split (files checked in `num_jobs` processes)."""
    utterances = read_split(split_dir, lowercase)
    if num_jobs <= 1 or len(utterances) <= CHUNK_SIZE:
        return build_cuts(utterances, on_bad_data)
    with ProcessPoolExecutor(num_jobs) as pool:
        parts = pool.map(partial(build_cuts, on_bad_data=on_bad_data),
                         _chunks(utterances, CHUNK_SIZE))
        return CutSet.from_cuts(cut for part in parts for cut in part)


def ensure_librispeech(corpus_dir: Path, splits: Sequence[str], download: bool) -> None:
    """Check every split is present locally; download the missing ones only if asked."""
    missing = [s for s in splits if not (corpus_dir / s).is_dir()]
    if not missing:
        return
    if not download:
        raise FileNotFoundError(
            f"{corpus_dir}: LibriSpeech split(s) {missing} not found. Point data.corpus_dir at a "
            "local copy (official layout) or pass data.download=true to fetch them."
        )
    unknown = sorted(set(missing) - set(LIBRISPEECH_SPLITS))
    if unknown:
        raise ValueError(f"unknown LibriSpeech split(s) {unknown}; known: {LIBRISPEECH_SPLITS}")
    from lhotse.recipes import download_librispeech

    if corpus_dir.name != "LibriSpeech":
        raise ValueError(f"{corpus_dir}: to download, data.corpus_dir must end in /LibriSpeech")
    log.info("downloading LibriSpeech %s into %s", missing, corpus_dir)
    # lhotse unpacks into <target_dir>/LibriSpeech/<split>.
    download_librispeech(corpus_dir.parent, dataset_parts=missing)


def prepare_librispeech(
    corpus_dir: str | Path,
    out_dir: str | Path,
    train_splits: Sequence[str],
    dev_splits: Sequence[str],
    test_splits: Sequence[str],
    download: bool = False,
    lowercase: bool = True,
    on_bad_data: str = "skip",
    num_jobs: int = 1,
) -> dict[str, Path]:
    """Cut manifests in `out_dir`; returns name -> path for every split and for the roles
    `train` and `dev`. Idempotent: split and role manifests already built with the same
    settings are reused untouched (the datamodule retrains the tokenizer only when the `train`
    manifest is newer than it)."""
    corpus_dir, out_dir = Path(corpus_dir).resolve(), Path(out_dir).resolve()
    roles = {"train": list(train_splits), "dev": list(dev_splits)}
    splits = list(dict.fromkeys([*roles["train"], *roles["dev"], *test_splits]))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"corpus_dir": str(corpus_dir), "lowercase": lowercase, "on_bad_data": on_bad_data}

    manifests = {split: out_dir / f"cuts_{split}.jsonl.gz" for split in splits}
    todo = [s for s in splits if not is_prepared(manifests[s], settings)]
    if todo:
        ensure_librispeech(corpus_dir, todo, download)
    for split in todo:
        cuts = split_cuts(corpus_dir / split, lowercase, on_bad_data, num_jobs)
        write_prepared(cuts, manifests[split], settings)
        log.info("LibriSpeech %s: %d utterances, %.1f h", split, len(cuts),
                 sum(c.duration for c in cuts) / 3600)
    for role, members in roles.items():
        manifests[role] = out_dir / f"cuts_{role}.jsonl.gz"
        role_settings = {**settings, "splits": members}
        rebuilt_member = set(members) & set(todo)
        if rebuilt_member or not is_prepared(manifests[role], role_settings):
            combined = CutSet.from_files([str(manifests[s]) for s in members])
            write_prepared(combined, manifests[role], role_settings)
    return manifests
