"""Optional data storage layouts beside the default (audio files, features on the fly).

- Precomputed features (`data.precompute_features=true`): our log-mel front end run once
  through lhotse's feature extraction into a storage directory, for when data-loader CPUs
  cannot keep up with the GPUs. The stored features are what `LogMelFeatures` computes,
  normalised as `data.features.normalize` says (by the training split's statistics for
  "global"), without dither (a per-epoch random draw) and without the centred STFT's final
  frame (lhotse stores duration / frame shift frames). SpecAugment still runs in the loader.
- lhotse Shar (`data.shar_dir=DIR`): the training cuts with their audio (or precomputed
  features) packed into tar shards, read sequentially: what cluster and cloud storage want
  instead of millions of small files. Each rank and data-loader worker reads its own shards.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
from lhotse import CutSet
from lhotse.features.base import FeatureExtractor, register_extractor
from lhotse.features.io import get_writer
from lhotse.utils import compute_num_frames

from edge_conformer.data.audio import resample, to_mono
from edge_conformer.data.corpora.prepared import write_cuts_atomically
from edge_conformer.data.features import FeatureSettings, FeatureStats, LogMelFeatures
from edge_conformer.data.manifests import load_cuts

log = logging.getLogger(__name__)


@register_extractor
class LogMelExtractor(FeatureExtractor):
    """lhotse's face of `LogMelFeatures`: same front end, any input rate or channel count."""

    name = "edge-conformer-log-mel"
    config_type = FeatureSettings

    def __init__(
        self, config: FeatureSettings | None = None, stats: FeatureStats | None = None
    ) -> None:
        super().__init__(config)
        self.module = LogMelFeatures(self.config, stats)

    @property
    def frame_shift(self) -> float:
        return 1 / self.config.frames_per_second

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.n_mels

    def extract(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        waveform = to_mono(samples)
        # lhotse requires duration / frame shift frames; the centred STFT gives one more.
        frames = compute_num_frames(waveform.shape[-1] / sampling_rate, self.frame_shift,
                                    sampling_rate)
        waveform = resample(waveform, sampling_rate, self.config.sample_rate)
        return self.module(waveform)[:frames].numpy()  # no generator: no dither


def precompute_features(
    cuts_path: Path, features: LogMelFeatures, storage_dir: Path, writer: str = "numpy_files",
    num_jobs: int = 1,
) -> Path:
    """A manifest of `cuts_path`'s cuts with stored `features`; reused while newer than it.
    Its name carries a hash of the feature settings and global statistics: changed ones
    compute anew."""
    stats = features.stats
    tag = features.settings.tag(asdict(stats) if stats else None)
    target = cuts_path.with_name(cuts_path.name.replace(".jsonl", f"_feats-{tag}.jsonl"))
    if target.is_file() and target.stat().st_mtime >= cuts_path.stat().st_mtime:
        return target
    extractor = LogMelExtractor(features.settings, stats)
    log.info("computing features of %s into %s", cuts_path.name, storage_dir)
    cuts = load_cuts(cuts_path).compute_and_store_features(
        extractor, storage_dir / f"{cuts_path.name.split('.')[0]}-{tag}", num_jobs=num_jobs,
        storage_type=get_writer(writer), progress_bar=False,
    )
    write_cuts_atomically(cuts, target)
    return target


def write_shar(cuts_path: Path, shar_dir: Path, shard_size: int = 1000) -> Path:
    """Pack `cuts_path`'s cuts and their audio (or features) into Shar shards, once."""
    shards = list(shar_dir.glob("cuts.*.jsonl*"))
    if shards:
        if max(p.stat().st_mtime for p in shards) < cuts_path.stat().st_mtime:
            raise ValueError(f"{shar_dir}: shards older than {cuts_path} (the training data "
                             "changed): remove the directory to write them anew")
        return shar_dir
    cuts = load_cuts(cuts_path)
    fields = {"features": "numpy"} if cuts[0].has_features else {"recording": "flac"}
    log.info("writing %s as lhotse Shar shards (%s) into %s", cuts_path.name, fields, shar_dir)
    shar_dir.mkdir(parents=True, exist_ok=True)
    cuts.to_shar(shar_dir, fields=fields, shard_size=shard_size, warn_unused_fields=False)
    return shar_dir


def shar_shard_count(shar_dir: Path) -> int:
    return len(list(shar_dir.glob("cuts.*.jsonl*")))


def shar_training_cuts(shar_dir: Path, seed: int) -> CutSet:
    """An endless, shuffled stream of the shards' cuts, split by rank and data-loader worker.

    Every rank reads different shards and the stream never ends, so training is bounded by
    `trainer.max_steps` and all ranks take the same number of steps.
    """
    cuts = CutSet.from_shar(
        in_dir=shar_dir, split_for_dataloading=True, shuffle_shards=True, seed=seed
    )
    return cuts.repeat(preserve_id=True)
