"""Global feature statistics (`data.features.normalize=global`): per-mel-bin mean and standard
deviation of the training split's log-mels, measured once by corpus preparation.

Cached in the data directory as feature_stats-<tag>.json, where the tag hashes the log-mel
settings and the training manifest's content: a changed manifest or front end measures anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch

from edge_conformer.data.audio import BadAudioError
from edge_conformer.data.dataset import load_cut_audio
from edge_conformer.data.features import FeatureSettings, FeatureStats, LogMelFeatures
from edge_conformer.data.manifests import load_cuts

log = logging.getLogger(__name__)


def training_feature_stats(
    train_manifest: Path, settings: FeatureSettings, data_dir: Path
) -> FeatureStats:
    """The statistics of `train_manifest`'s log-mels under `settings`, measured or cached."""
    # Dither and normalisation do not change the log-mels measured: they do not key the cache.
    log_mel_settings = replace(settings, dither=0.0, normalize="none")
    manifest_digest = hashlib.sha1(Path(train_manifest).read_bytes()).hexdigest()
    cache = Path(data_dir) / f"feature_stats-{log_mel_settings.tag(manifest_digest)}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        return FeatureStats(saved["mean"], saved["std"])
    stats, frames = measure_feature_stats(train_manifest, log_mel_settings)
    log.info("measured log-mel statistics of %s (%d frames): %s", train_manifest, frames, cache)
    record = {"manifest": str(train_manifest), "manifest_sha1": manifest_digest,
              "settings": asdict(log_mel_settings), "frames": frames, **asdict(stats)}
    # Written whole or not at all: a run killed mid-write must not leave a cache to trust.
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".tmp.{cache.name}")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(cache)
    return stats


def measure_feature_stats(manifest: Path, settings: FeatureSettings) -> tuple[FeatureStats, int]:
    """Per-bin mean and (population) standard deviation over every frame of the manifest's
    cuts, and the number of frames. Unusable audio is skipped, as training skips it."""
    front_end = LogMelFeatures(settings)
    # One intra-op thread: each STFT is tiny, and two threads contending with a busy machine
    # (or with data-loader workers) made the pass 12x slower, measured on 100 FSDD cuts.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _accumulate(manifest, front_end)
    finally:
        torch.set_num_threads(threads)


def _accumulate(manifest: Path, front_end: LogMelFeatures) -> tuple[FeatureStats, int]:
    n_mels = front_end.settings.n_mels
    total = torch.zeros(n_mels, dtype=torch.float64)
    squares = torch.zeros(n_mels, dtype=torch.float64)
    frames = 0
    for cut in load_cuts(manifest):
        try:
            waveform = load_cut_audio(cut, front_end.settings.sample_rate)
        except BadAudioError as err:
            log.warning("feature statistics skip %s", err)
            continue
        log_mel = front_end.log_mel(waveform).double()
        total += log_mel.sum(dim=0)
        squares += log_mel.square().sum(dim=0)
        frames += log_mel.shape[0]
    if not frames:
        raise ValueError(f"{manifest}: no usable audio to measure feature statistics on")
    mean = total / frames
    # Sums in float64 over log-mels of magnitude ~20: the difference loses nothing that matters.
    std = (squares / frames - mean.square()).clamp(min=0).sqrt()
    return FeatureStats(mean.tolist(), std.tolist()), frames
