"""LightningDataModule over lhotse manifests with duration-bucketed dynamic batching."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, IterableDatasetWrapper

from edge_conformer.config import ConfigError
from edge_conformer.data.augment import AugmentSettings, WaveformAugment
from edge_conformer.data.dataset import AsrDataset
from edge_conformer.data.feature_stats import training_feature_stats
from edge_conformer.data.features import (
    WITH_TRAINING_STATS,
    FeatureSettings,
    LogMelFeatures,
    SpecAugment,
)
from edge_conformer.data.manifests import cut_text, load_cuts
from edge_conformer.data.storage import (
    precompute_features,
    shar_shard_count,
    shar_training_cuts,
    write_shar,
)
from edge_conformer.data.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)


class ResumableSampler(torch.utils.data.Sampler):
    """Wraps a lhotse sampler so that a resumed epoch skips the batches already trained on.

    Skipping happens on cut metadata in the main process (no audio is read), and the wrapped
    sampler's order depends only on (seed, epoch), so the resumed run sees exactly the batches
    the uninterrupted run would have seen.
    """

    def __init__(
        self, sampler: DynamicBucketingSampler, dataset: AsrDataset, source: str = "training cuts"
    ) -> None:
        self.sampler = sampler
        self.dataset = dataset
        self.source = source  # named in errors: the manifest the cuts come from
        self.epoch = 0
        self.resume_epoch: int | None = None
        self.resume_batches = 0

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self.set_epoch(epoch)
        self.resume_epoch, self.resume_batches = epoch, batches_done

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        self.dataset.epoch = epoch

    def __iter__(self) -> Iterator[CutSet]:
        # Skip in every iteration of the resumed epoch, not just the first: Lightning may
        # start an iterator over the loader before the one it trains from.
        skip = self.resume_batches if self.epoch == self.resume_epoch else 0
        # A lhotse sampler is its own iterator and `iter()` on it restarts the epoch, so no
        # `yield from` or `for` over it after skipping: both call `iter()` again.
        batches = iter(self.sampler)
        for _ in range(skip):
            next(batches, None)
        yielded = 0
        while (batch := next(batches, None)) is not None:
            yielded += 1
            yield batch
        if not yielded and not skip:
            # Lightning would start epoch after empty epoch and never reach max_steps.
            raise ConfigError(
                f"{self.source}: an epoch yields no training batch (every duration bucket holds"
                " less than one data.max_duration batch and drop_last discards it): lower"
                " data.max_duration or data.num_buckets, or add training data"
            )


class SpeechDataModule(L.LightningDataModule):
    def __init__(
        self,
        name: str,
        prepare: Callable[..., dict[str, Path]],
        data_dir: str,
        train_split: str,
        dev_split: str,
        test_splits: Sequence[str],
        tokenizer: dict,
        features: dict,
        spec_augment: dict | None,
        max_duration: float,
        augment: dict | None = None,
        num_buckets: int = 10,
        num_workers: int = 2,
        seed: int = 0,
        precompute_features: bool = False,
        feature_writer: str = "numpy_files",
        shar_dir: str | None = None,
        shar_shard_size: int = 1000,
        **corpus_location: object,
    ) -> None:
        """`prepare(out_dir=...)` builds the manifests; `corpus_location` holds what the
        config names for `prepare` to read (data.fsdd_dir, data.corpus_dir, split lists).

        `precompute_features` stores features once (lhotse storage `feature_writer`) instead
        of computing them in the loader; `shar_dir` trains from lhotse Shar shards written
        there (see edge_conformer/data/storage.py). `augment` (data.augment) perturbs the
        training audio before features (edge_conformer/data/augment.py)."""
        super().__init__()
        self.corpus_location = corpus_location
        self.name = name
        self.prepare = prepare
        self.data_dir = Path(data_dir)
        self.train_split = train_split
        self.dev_split = dev_split
        self.test_splits = list(test_splits)
        self.tokenizer_cfg = dict(tokenizer)
        self.feature_settings = FeatureSettings(**features)
        # Built by prepare_data: global normalisation needs the training split's statistics.
        self.features: LogMelFeatures | None = None
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else None
        augment_settings = AugmentSettings.from_config(augment)
        self.augment = (WaveformAugment(augment_settings, self.feature_settings.sample_rate)
                        if augment_settings else None)
        self.max_duration = max_duration
        self.num_buckets = num_buckets
        self.num_workers = num_workers
        self.seed = seed
        self.precompute_features = precompute_features
        self.feature_writer = feature_writer
        self.shar_dir = Path(shar_dir) if shar_dir else None
        self.shar_shard_size = shar_shard_size
        self.manifests: dict[str, Path] = {}
        self.tokenizer: Tokenizer | None = None
        self._train_sampler: ResumableSampler | None = None
        self._resume_position: dict | None = None

    @property
    def tokenizer_path(self) -> Path:
        cfg = self.tokenizer_cfg
        return self.data_dir / f"tokenizer_{cfg['model_type']}{cfg['vocab_size']}.model"

    def prepare_data(self) -> None:
        """Prepare manifests (idempotent), train the tokenizer on the training texts and build
        the front end (measuring the training split's feature statistics if it needs them)."""
        self.manifests = self.prepare(out_dir=self.data_dir)
        self._drop_unprepared_test_splits()
        train_manifest = self.manifests[self.train_split]
        # A tokenizer older than the training manifest was trained on other texts: retrain.
        if (self.tokenizer_path.is_file()
                and self.tokenizer_path.stat().st_mtime >= train_manifest.stat().st_mtime):
            self.tokenizer = Tokenizer(self.tokenizer_path)
        else:
            texts = [cut_text(c) for c in load_cuts(train_manifest)]
            self.tokenizer = train_tokenizer(texts, self.tokenizer_path, **self.tokenizer_cfg)
            log.info("trained a %d-piece tokenizer: %s", self.tokenizer.vocab_size,
                     self.tokenizer_path)
        stats = None
        if self.feature_settings.normalize in WITH_TRAINING_STATS:
            stats = training_feature_stats(train_manifest, self.feature_settings, self.data_dir)
        self.features = LogMelFeatures(self.feature_settings, stats)
        if self.precompute_features:
            storage = self.data_dir / "features"
            self.manifests = {
                name: precompute_features(Path(path), self.features, storage,
                                          self.feature_writer)
                for name, path in self.manifests.items()
                if name in (self.train_split, self.dev_split, *self.test_splits)
            }
        if self.shar_dir:
            write_shar(self.manifests[self.train_split], self.shar_dir, self.shar_shard_size)

    def _drop_unprepared_test_splits(self) -> None:
        """Test only the test splits the preparer wrote: an optional one (digits' new_voices
        without a synthesiser) is left out, and the preparer has said why."""
        missing = [name for name in self.test_splits if name not in self.manifests]
        if missing:
            log.warning("data.test_splits: %s not prepared, not tested", ", ".join(missing))
            self.test_splits = [name for name in self.test_splits if name in self.manifests]

    def setup(self, stage: str | None = None) -> None:
        if not self.manifests or self.tokenizer is None:
            self.prepare_data()

    def _dataset(self, train: bool) -> AsrDataset:
        return AsrDataset(
            self.features, self.tokenizer, self.spec_augment if train else None, self.seed,
            self.augment if train else None,
        )

    def _sampler(self, split: str, train: bool) -> DynamicBucketingSampler:
        world_size = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        cuts = load_cuts(self.manifests[split])
        return DynamicBucketingSampler(
            cuts,
            max_duration=self.max_duration,
            num_buckets=min(self.num_buckets, len(cuts)),
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            world_size=world_size,
            rank=rank,
        )

    def _loader(self, dataset: AsrDataset, sampler) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            # A private generator keeps worker seeding off the global RNG, whose state the
            # checkpoint restores for dropout: resumed runs then draw the same masks.
            generator=torch.Generator(),
        )

    def _shar_train_loader(self, dataset: AsrDataset) -> torch.utils.data.DataLoader:
        """Sampling runs inside each worker on its own shards (lhotse's Shar recipe)."""
        readers = (self.trainer.world_size if self.trainer else 1) * max(1, self.num_workers)
        if shar_shard_count(self.shar_dir) < readers:
            raise ConfigError(
                f"{self.shar_dir}: {shar_shard_count(self.shar_dir)} shards for {readers} readers"
                " (ranks x workers): lower data.shar_shard_size and rewrite the shards"
            )
        sampler = DynamicBucketingSampler(
            shar_training_cuts(self.shar_dir, self.seed), max_duration=self.max_duration,
            num_buckets=self.num_buckets, shuffle=True, drop_last=True, seed=self.seed,
            world_size=1, rank=0,  # the shards are already split across ranks
        )
        return torch.utils.data.DataLoader(
            IterableDatasetWrapper(dataset, sampler), batch_size=None,
            num_workers=self.num_workers, generator=torch.Generator(),
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = self._dataset(train=True)
        if self.shar_dir:
            return self._shar_train_loader(dataset)
        self._train_sampler = ResumableSampler(
            self._sampler(self.train_split, True), dataset, str(self.manifests[self.train_split])
        )
        # Kept, not consumed: harmless if the loader is built again, because the sampler only
        # skips inside the resumed epoch.
        if self._resume_position:
            self._train_sampler.resume_at(**self._resume_position)
        return self._loader(dataset, self._train_sampler)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self._dataset(False), self._sampler(self.dev_split, False))

    def test_dataloader(self) -> list[torch.utils.data.DataLoader]:
        return [self._loader(self._dataset(False), self._sampler(s, False))
                for s in self.test_splits]

    # Exact resume: the checkpoint records where in the epoch training stopped.
    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        # `processed`, not `completed`: checkpoints are written from on_train_batch_end, after
        # the batch's optimiser step but before Lightning counts the batch as completed.
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        # Lightning may build the train loader before or after restoring this state.
        self._resume_position = state or None
        if self._resume_position and self._train_sampler is not None:
            self._train_sampler.resume_at(**self._resume_position)
