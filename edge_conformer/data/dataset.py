"""A lhotse-style map dataset: a CutSet batch in, padded features and CTC targets out."""

from __future__ import annotations

import logging
import zlib

import torch
from lhotse import CutSet
from torch.nn.utils.rnn import pad_sequence

from edge_conformer.data.audio import BadAudioError, to_mono
from edge_conformer.data.augment import WaveformAugment
from edge_conformer.data.features import LogMelFeatures, SpecAugment
from edge_conformer.data.manifests import cut_text
from edge_conformer.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def cut_audio_path(cut) -> str:
    sources = getattr(cut.recording, "sources", None) or []
    return ", ".join(str(s.source) for s in sources) or cut.id


def load_cut_audio(cut, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform of `cut` at `sample_rate`; BadAudioError names the file."""
    if cut.sampling_rate != sample_rate:
        cut = cut.resample(sample_rate)
    try:
        samples = cut.load_audio()
    except Exception as err:
        raise BadAudioError(f"{cut_audio_path(cut)}: unreadable audio ({err})") from err
    waveform = to_mono(samples)
    if waveform.numel() == 0:
        raise BadAudioError(f"{cut_audio_path(cut)}: audio has zero samples")
    if not torch.isfinite(waveform).all():
        raise BadAudioError(f"{cut_audio_path(cut)}: audio contains NaN or infinite samples")
    return waveform


class AsrDataset(torch.utils.data.Dataset):
    """Loads, resamples, down-mixes, (in training) augments the audio, featurises and
    (in training) masks the features of a batch of cuts.

    Cuts whose audio or transcript turns out unusable at load time are skipped with a warning
    that names the file; the batch reports how many were skipped so training can count them.
    """

    def __init__(
        self,
        features: LogMelFeatures,
        tokenizer: Tokenizer,
        spec_augment: SpecAugment | None = None,
        seed: int = 0,
        augment: WaveformAugment | None = None,
    ) -> None:
        self.features = features
        self.tokenizer = tokenizer
        self.spec_augment = spec_augment
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def _generator(self, cuts: CutSet) -> torch.Generator:
        # Augmentation depends only on (seed, epoch, the batch's cut ids): reproducible in any
        # worker process and across an interrupted-and-resumed run.
        key = f"{self.seed}:{self.epoch}:" + ",".join(c.id for c in cuts)
        return torch.Generator().manual_seed(zlib.crc32(key.encode()))

    def _example(self, cut, generator: torch.Generator) -> tuple[torch.Tensor, list[int], str]:
        text = cut_text(cut)
        if not text:
            raise BadAudioError(f"{cut_audio_path(cut)}: missing transcript for cut {cut.id}")
        if cut.has_features:  # stored by the datamodule (data.precompute_features=true)
            feats = torch.from_numpy(cut.load_features())
        else:
            waveform = load_cut_audio(cut, self.features.sample_rate)
            if self.augment is not None:
                waveform = self.augment(waveform, generator)
            feats = self.features(waveform, generator)
        if self.spec_augment is not None:
            feats = self.spec_augment(feats, generator)
        return feats, self.tokenizer.encode(text), text

    def __getitem__(self, cuts: CutSet) -> dict:
        generator = self._generator(cuts)
        feats, targets, texts, ids, skipped = [], [], [], [], 0
        for cut in cuts:
            try:
                cut_feats, cut_targets, text = self._example(cut, generator)
            except BadAudioError as err:
                log.warning("skipping %s", err)
                skipped += 1
                continue
            feats.append(cut_feats)
            targets.append(torch.tensor(cut_targets, dtype=torch.long) + 1)  # 0 is CTC blank
            texts.append(text)
            ids.append(cut.id)
        return collate(feats, targets, texts, ids, skipped)


def collate(feats, targets, texts, ids, skipped: int) -> dict:
    empty = torch.zeros(0, dtype=torch.long)
    return {
        "features": pad_sequence(feats, batch_first=True) if feats else torch.zeros(0, 0, 0),
        "feature_lengths": torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
        "targets": pad_sequence(targets, batch_first=True) if targets else empty,
        "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
        "texts": texts,
        "ids": ids,
        "skipped": skipped,
    }
