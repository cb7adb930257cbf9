"""The schema of every conf/ group: typed fields, choices and ranges, checked before any work.

Hydra merges each YAML file onto its dataclass (conf/train.yaml and conf/export.yaml name the
root schemas, each conf/data, conf/optim and conf/logger file its own), so an unknown key or a
value of the wrong type fails while the config is composed. Choices and ranges are checked in
`__post_init__`, which runs when the composed config is turned into these objects
(`OmegaConf.to_object`; edge_conformer/config/entry.py does that before train.py or export.py
imports anything heavy). The YAML files hold every value: fields here have no defaults.

Imports neither torch nor Lightning: the choices below repeat the names the model, front end
and export code accept (tests/test_config.py checks that they agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from edge_conformer.errors import UserInputError

SUBSAMPLING_KINDS = ("regular", "depthwise")  # edge_conformer/model/subsampling.py
NORMS = ("l2", "mad")  # edge_conformer/model/norms.py
CONV_CONTEXTS = ("symmetric", "chunk", "causal")  # edge_conformer/model/modules.py
FEATURE_NORMALIZATIONS = ("utterance", "global", "running", "none")  # data/features.py
TOKENIZER_TYPES = ("unigram", "bpe", "char", "word")  # sentencepiece's model types
BAD_DATA_POLICIES = ("skip", "error")  # edge_conformer/data/corpora/*
NOISE_COLORS = ("white", "pink", "brown")  # edge_conformer/data/augment.py
TEST_CHECKPOINTS = ("last", "best")  # conf/train.yaml test_checkpoint (training/run.py)
PRENORMALIZERS = ("none", "maxabs", "mad")  # edge_conformer/numerics/prenorm.py
# The executor's fp32 mode checks the executor itself: as a gate it would prove nothing of FP16.
GATE_EXECUTOR_MODES = ("fp16", "fp16-strict")
# export.compress: edge_conformer/export/compress.py (its LEVELS, then "auto").
COMPRESSIONS = ("none", "int8", "palettize8", "palettize6", "palettize4", "auto")


class ConfigError(UserInputError, ValueError):
    """A config value that cannot be used; the message starts with its key. A schema's
    checks name the key within their node (`norm=...`); edge_conformer/config/entry.py
    prefixes the node's place (`model.norm=...`)."""


def require(ok: bool, key: str, value: object, rule: str) -> None:
    """Raise ConfigError("key=value rule") unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r} {rule}")


def require_choice(key: str, value: str, choices: Sequence[str]) -> None:
    require(value in choices, key, value, f"is not one of: {', '.join(choices)}")


def require_at_least(node: object, low: float, *keys: str) -> None:
    """Each of `keys` (fields of `node`) is >= low."""
    for key in keys:
        value = getattr(node, key)
        require(value >= low, key, value, f"must be >= {low}")


def require_share(key: str, value: float) -> None:
    """A probability or share of something: 0 <= value <= 1."""
    require(0 <= value <= 1, key, value, "must lie in [0, 1]")


@dataclass
class StreamingConfig:
    """model.streaming: dynamic chunk training (edge_conformer/training/chunking.py); chunk
    sizes and left contexts in encoder frames, left -1 = unlimited."""

    enabled: bool = MISSING
    full_context_share: float = MISSING
    chunks_from_step: int = MISSING
    chunk_sizes: list[int] = MISSING
    left_contexts: list[int] = MISSING
    eval_chunk: int = MISSING
    eval_left: int = MISSING

    def __post_init__(self) -> None:
        require_share("full_context_share", self.full_context_share)
        require_at_least(self, 0, "chunks_from_step")
        sizes, lefts = list(self.chunk_sizes), list(self.left_contexts)
        require(bool(sizes) and min(sizes) >= 1, "chunk_sizes", sizes, "must be >= 1 each")
        require(bool(lefts) and min(lefts) >= -1, "left_contexts", lefts,
                "must be >= -1 each (-1: unlimited)")
        require_at_least(self, 1, "eval_chunk")
        require(self.eval_left == -1 or (self.eval_left >= 0 and self.eval_left % self.eval_chunk
                                         == 0), "eval_left", self.eval_left,
                f"must be -1 or a multiple of eval_chunk={self.eval_chunk}")


@dataclass
class ModelConfig:
    """conf/model/*.yaml: a Conformer-CTC (edge_conformer.model.ConformerCTC's arguments)."""

    _target_: str = MISSING
    name: str = MISSING
    d_model: int = MISSING
    num_heads: int = MISSING
    num_layers: int = MISSING
    ffn_mult: int = MISSING
    conv_kernel_size: int = MISSING
    subsampling: str = MISSING
    subsampling_channels: int | None = MISSING
    norm: str = MISSING
    dropout: float = MISSING
    conv_context: str = MISSING
    streaming: StreamingConfig = MISSING

    def __post_init__(self) -> None:
        require_at_least(self, 1, "d_model", "num_heads", "num_layers", "ffn_mult",
                         "conv_kernel_size")
        # Rotary positions rotate pairs of channels: each head needs an even width.
        require(self.d_model % (2 * self.num_heads) == 0, "d_model", self.d_model,
                f"must split into num_heads={self.num_heads} heads of even width")
        # Symmetric "same" padding needs a centre tap.
        require(self.conv_kernel_size % 2 == 1, "conv_kernel_size", self.conv_kernel_size,
                "must be odd")
        require_choice("subsampling", self.subsampling, SUBSAMPLING_KINDS)
        if self.subsampling_channels is not None:
            require_at_least(self, 1, "subsampling_channels")
        require_choice("norm", self.norm, NORMS)
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must lie in [0, 1)")
        require_choice("conv_context", self.conv_context, CONV_CONTEXTS)


@dataclass
class FeaturesConfig:
    """data.features: the log-mel front end (FeatureSettings in edge_conformer/data/features.py)."""

    sample_rate: int = MISSING
    n_mels: int = MISSING
    n_fft: int = MISSING
    win_length_ms: float = MISSING
    hop_length_ms: float = MISSING
    preemphasis: float = MISSING
    dither: float = MISSING
    normalize: str = MISSING
    running_prior_frames: int = MISSING

    def __post_init__(self) -> None:
        require_at_least(self, 1, "sample_rate", "n_mels", "n_fft", "running_prior_frames")
        hop = int(self.sample_rate * self.hop_length_ms / 1000)
        require(hop >= 1, "hop_length_ms", self.hop_length_ms,
                f"must span at least one sample at sample_rate={self.sample_rate}")
        window = int(self.sample_rate * self.win_length_ms / 1000)
        require(1 <= window <= self.n_fft, "win_length_ms", self.win_length_ms,
                f"must span 1 to n_fft={self.n_fft} samples at sample_rate={self.sample_rate}")
        require(0 <= self.preemphasis < 1, "preemphasis", self.preemphasis, "must lie in [0, 1)")
        require_at_least(self, 0, "dither")
        require_choice("normalize", self.normalize, FEATURE_NORMALIZATIONS)


@dataclass
class TokenizerConfig:
    vocab_size: int = MISSING
    model_type: str = MISSING

    def __post_init__(self) -> None:
        require_at_least(self, 2, "vocab_size")
        require_choice("model_type", self.model_type, TOKENIZER_TYPES)


@dataclass
class SpecAugmentConfig:
    freq_masks: int = MISSING
    freq_width: int = MISSING
    time_masks: int = MISSING
    time_width: float = MISSING  # share of the utterance

    def __post_init__(self) -> None:
        require_at_least(self, 0, "freq_masks", "freq_width", "time_masks")
        require_share("time_width", self.time_width)


def require_range(key: str, value: Sequence[float], low: float) -> None:
    """A [low_end, high_end] pair with low <= low_end <= high_end."""
    pair = list(value)
    require(len(pair) == 2 and low <= pair[0] <= pair[1], key, pair,
            f"must be [low, high] with {low} <= low <= high")


@dataclass
class AugmentStage:
    """What every data.augment stage holds: the probability that it applies to an utterance."""

    prob: float = MISSING

    def __post_init__(self) -> None:
        require_share("prob", self.prob)


@dataclass
class SpeedConfig(AugmentStage):
    factors: list[float] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.factors) > 0 and all(f > 0 for f in self.factors), "factors",
                list(self.factors), "must be a non-empty list of factors > 0")


@dataclass
class GainConfig(AugmentStage):
    db: list[float] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("db", self.db, float("-inf"))


@dataclass
class EqConfig(AugmentStage):
    db: float = MISSING
    bands: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 0, "db")
        require_at_least(self, 1, "bands")


@dataclass
class NoiseConfig(AugmentStage):
    snr_db: list[float] = MISSING
    colors: list[str] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("snr_db", self.snr_db, float("-inf"))
        require(len(self.colors) > 0, "colors", list(self.colors), "must name a noise colour")
        for color in self.colors:
            require_choice("colors", color, NOISE_COLORS)


@dataclass
class ReverbConfig(AugmentStage):
    rt60: list[float] = MISSING
    drr_db: list[float] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require_range("rt60", self.rt60, 1e-3)
        require_range("drr_db", self.drr_db, float("-inf"))


@dataclass
class AugmentConfig:
    """data.augment: waveform augmentation in training (edge_conformer/data/augment.py);
    each stage null is off."""

    speed: SpeedConfig | None = MISSING
    # Off unless named: the stage came after the others, and overrides written before it
    # (`data.augment='{speed: ..., reverb: null, noise: null, gain: null}'`) stay valid.
    eq: EqConfig | None = None
    reverb: ReverbConfig | None = MISSING
    noise: NoiseConfig | None = MISSING
    gain: GainConfig | None = MISSING


@dataclass
class PartialTarget:
    """A function Hydra binds to its arguments for later calls (`_partial_: true`)."""

    _target_: str = MISSING
    _partial_: bool = MISSING


@dataclass
class DataConfig:
    """What every conf/data recipe holds (SpeechDataModule's arguments); each recipe adds
    where its corpus lies and how its `prepare` function reads it."""

    _target_: str = MISSING
    name: str = MISSING
    data_dir: str = MISSING
    prepare: PartialTarget = MISSING
    train_split: str = MISSING
    dev_split: str = MISSING
    test_splits: list[str] = MISSING
    tokenizer: TokenizerConfig = MISSING
    features: FeaturesConfig = MISSING
    spec_augment: SpecAugmentConfig | None = MISSING
    augment: AugmentConfig | None = MISSING
    max_duration: float = MISSING
    num_buckets: int = MISSING
    num_workers: int = MISSING
    seed: int = MISSING
    precompute_features: bool = MISSING
    feature_writer: str = MISSING
    shar_dir: str | None = MISSING
    shar_shard_size: int = MISSING

    def __post_init__(self) -> None:
        require(self.max_duration > 0, "max_duration", self.max_duration, "must be > 0 seconds")
        require_at_least(self, 1, "num_buckets", "shar_shard_size")
        require_at_least(self, 0, "num_workers")
        # Stored features are computed once from the plain audio: nothing left to augment.
        require(not (self.precompute_features and self.augment is not None),
                "precompute_features", self.precompute_features,
                "stores features once, so data.augment (speed, eq, reverb, noise, gain) cannot be"
                " applied to the audio: set data.augment=null or data.precompute_features=false")


@dataclass
class DigitsPrepare(PartialTarget):
    fsdd_dir: str = MISSING
    unseen_speaker: str = MISSING
    num_train: int = MISSING
    num_dev: int = MISSING
    num_test: int = MISSING
    num_unseen: int = MISSING
    num_new_voices: int = MISSING
    min_digits: int = MISSING
    max_digits: int = MISSING
    gap_seconds: list[float] = MISSING
    seed: int = MISSING

    def __post_init__(self) -> None:
        require_at_least(self, 1, "num_train", "num_dev", "num_test", "num_unseen", "min_digits")
        require_at_least(self, 0, "num_new_voices")
        require_at_least(self, self.min_digits, "max_digits")
        gaps = list(self.gap_seconds)
        require(len(gaps) == 2 and 0 <= gaps[0] <= gaps[1], "gap_seconds", gaps,
                "must be [shortest, longest] with 0 <= shortest <= longest")


@dataclass
class DigitsData(DataConfig):
    """conf/data/digits.yaml."""

    fsdd_dir: str = MISSING
    prepare: DigitsPrepare = MISSING


@dataclass
class CorpusPrepare(PartialTarget):
    lowercase: bool = MISSING
    on_bad_data: str = MISSING

    def __post_init__(self) -> None:
        require_choice("on_bad_data", self.on_bad_data, BAD_DATA_POLICIES)


@dataclass
class LibriSpeechPrepare(CorpusPrepare):
    corpus_dir: str = MISSING
    download: bool = MISSING
    train_splits: list[str] = MISSING
    dev_splits: list[str] = MISSING
    test_splits: list[str] = MISSING
    num_jobs: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "num_jobs")


@dataclass
class LibriSpeechData(DataConfig):
    """conf/data/librispeech.yaml."""

    corpus_dir: str = MISSING
    download: bool = MISSING
    train_splits: list[str] = MISSING
    dev_splits: list[str] = MISSING
    prepare: LibriSpeechPrepare = MISSING


@dataclass
class LhotsePrepare(CorpusPrepare):
    train_manifests: list[str] = MISSING
    dev_manifests: list[str] = MISSING
    test_manifests: Any = MISSING  # as LhotseData.test_manifests


@dataclass
class LhotseData(DataConfig):
    """conf/data/lhotse.yaml."""

    train_manifests: list[str] = MISSING
    dev_manifests: list[str] = MISSING
    # Test set name -> manifest paths. Any, not dict[str, list[str]]: OmegaConf's typed dicts
    # refuse new keys from the command line ('data.test_manifests={test: [...]}').
    test_manifests: Any = MISSING
    prepare: LhotsePrepare = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        manifests = self.test_manifests
        require(isinstance(manifests, dict)
                and all(isinstance(paths, list) for paths in manifests.values()),
                "test_manifests", manifests, "must map each test set to a list of manifests")


@dataclass
class Schedule:
    """What every conf/optim/schedule file holds: a function of these arguments that returns
    the learning-rate multiplier of each step (edge_conformer/training/schedules.py)."""

    _target_: str = MISSING
    warmup_steps: int = MISSING

    def __post_init__(self) -> None:
        require_at_least(self, 0, "warmup_steps")


@dataclass
class CosineSchedule(Schedule):
    """conf/optim/schedule/cosine.yaml."""

    total_steps: int = MISSING
    min_factor: float = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.total_steps >= 1 or self.total_steps == -1, "total_steps",
                self.total_steps, "must be >= 1, or -1 for an epoch-based run")
        require_share("min_factor", self.min_factor)


@dataclass
class NoamSchedule(Schedule):
    """conf/optim/schedule/noam.yaml."""

    def __post_init__(self) -> None:
        require_at_least(self, 1, "warmup_steps")  # its warm-up divides by warmup_steps


@dataclass
class OptimizerConfig:
    """What every conf/optim file holds: a torch.optim class with its arguments (less the
    parameters), and the learning-rate schedule (`optim/schedule=cosine|noam`)."""

    _target_: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    schedule: Schedule = MISSING

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require_at_least(self, 0, "weight_decay")


@dataclass
class AdamWConfig(OptimizerConfig):
    """conf/optim/adamw.yaml."""

    betas: list[float] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        betas = list(self.betas)
        require(len(betas) == 2 and all(0 <= beta < 1 for beta in betas), "betas", betas,
                "must be two values in [0, 1)")


@dataclass
class SGDConfig(OptimizerConfig):
    """conf/optim/sgd.yaml."""

    momentum: float = MISSING
    nesterov: bool = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.momentum < 1, "momentum", self.momentum, "must lie in [0, 1)")
        require(not self.nesterov or self.momentum > 0, "nesterov", self.nesterov,
                "needs momentum > 0")


@dataclass
class TrainerConfig:
    """conf/trainer/*.yaml: lightning.Trainer's arguments. The ones the presets set are typed
    here; any other Trainer argument can be added with `+trainer.<argument>=...`."""

    accelerator: str = MISSING
    devices: Any = MISSING  # a count, "auto", or a list of device indices
    strategy: Any = MISSING  # a name, or a strategy object to instantiate (trainer=fsdp)
    num_nodes: int = MISSING
    use_distributed_sampler: bool = MISSING
    sync_batchnorm: bool = MISSING
    precision: str = MISSING
    max_steps: int = MISSING
    max_epochs: int = MISSING
    accumulate_grad_batches: int = MISSING
    gradient_clip_val: float | None = MISSING
    # Steps (int) or a share of the epoch (float). Typed Any: OmegaConf's union nodes fail
    # inside Hydra's composition; __post_init__ checks the type.
    val_check_interval: Any = MISSING
    check_val_every_n_epoch: int | None = MISSING
    log_every_n_steps: int = MISSING
    num_sanity_val_steps: int = MISSING
    enable_model_summary: bool = MISSING
    enable_progress_bar: bool = MISSING

    def __post_init__(self) -> None:
        require_at_least(self, 1, "num_nodes", "accumulate_grad_batches", "log_every_n_steps")
        require_at_least(self, -1, "max_epochs", "num_sanity_val_steps")
        require(self.max_steps >= 1 or self.max_steps == -1, "max_steps", self.max_steps,
                "must be >= 1, or -1 to train trainer.max_epochs epochs")
        require(self.max_steps >= 1 or self.max_epochs >= 1, "max_epochs", self.max_epochs,
                "must be >= 1 when trainer.max_steps=-1 (else training never ends)")
        if self.gradient_clip_val is not None:
            require_at_least(self, 0, "gradient_clip_val")
        interval = self.val_check_interval
        # Lightning reads an int as steps and a float as a share of the training epoch.
        if isinstance(interval, int) and not isinstance(interval, bool):
            require(interval >= 1, "val_check_interval", interval, "must be >= 1 steps")
        elif interval is not None:
            require(isinstance(interval, float) and 0 < interval <= 1, "val_check_interval",
                    interval, "must be steps >= 1, a share of the epoch in (0, 1], or null")


@dataclass
class WandbLoggerConfig:
    """conf/logger/wandb.yaml (edge_conformer/training/loggers.py: wandb_logger)."""

    _target_: str = MISSING
    project: str = MISSING
    entity: str | None = MISSING
    online: bool = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING


@dataclass
class CsvLoggerConfig:
    """conf/logger/csv.yaml (edge_conformer/training/loggers.py: csv_logger)."""

    _target_: str = MISSING


@dataclass
class AveragingConfig:
    """conf/train.yaml `averaging` (edge_conformer/training/averaging.py)."""

    start_share: float | None = MISSING
    every_n_steps: int = MISSING

    def __post_init__(self) -> None:
        if self.start_share is not None:
            require(0 <= self.start_share < 1, "start_share", self.start_share,
                    "must lie in [0, 1)")
        require_at_least(self, 1, "every_n_steps")


@dataclass
class TrainConfig:
    """conf/train.yaml: train.py's whole config. data, optim and logger take the schema their
    own file names (a recipe, an optimiser, a logger each have their own keys)."""

    model: ModelConfig = MISSING
    data: Any = MISSING
    optim: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: Any = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    checkpoint_every_n_steps: int = MISSING
    test_checkpoint: str = MISSING
    averaging: AveragingConfig = MISSING
    run_name: str = MISSING
    sweep_name: str = MISSING

    def __post_init__(self) -> None:
        require_at_least(self, 1, "checkpoint_every_n_steps")
        require_choice("test_checkpoint", self.test_checkpoint, TEST_CHECKPOINTS)


def require_fixed_left_context(chunk_key: str, chunk: int, left_key: str, left: int) -> None:
    """A streaming package's chunk geometry (encoder frames): its caches have fixed shapes, so
    the left context must be finite and whole chunks, at least one."""
    require(chunk >= 1, chunk_key, chunk, "must be >= 1")
    require(left != -1, left_key, left,
            "(unlimited) cannot be exported: the streaming package's caches have fixed shapes")
    require(left >= chunk and left % chunk == 0, left_key, left,
            f"must be a multiple of {chunk_key}={chunk}, at least one chunk")


@dataclass
class StreamingExport:
    """export.streaming: the streaming package (stream.mlpackage); frames are encoder frames,
    null takes the model's model.streaming.eval_chunk / eval_left."""

    enabled: Any = MISSING  # auto | true | false
    chunk_frames: int | None = MISSING
    left_frames: int | None = MISSING

    def __post_init__(self) -> None:
        require(self.enabled == "auto" or isinstance(self.enabled, bool), "enabled",
                self.enabled, "is not one of: auto, true, false")
        # Checked again, on the model's values, where null takes them (export/stream_checks.py).
        if self.chunk_frames is not None and self.left_frames is not None:
            require_fixed_left_context("chunk_frames", self.chunk_frames,
                                       "left_frames", self.left_frames)


@dataclass
class ExportSettings:
    """conf/export/default.yaml: the `export.` knobs (see there for what each one does)."""

    prenormalizer: str = MISSING
    softmax_rescale: bool = MISSING
    executor: str = MISSING
    window_seconds: float = MISSING
    overlap_seconds: float = MISSING
    test_sets: list[str] | None = MISSING
    max_utterances: int | None = MISSING
    min_identical: float = MISSING
    max_wer_delta: float = MISSING
    count_ties: bool = MISSING
    wandb: bool = MISSING
    data_dir: str | None = MISSING
    streaming: StreamingExport = MISSING
    compress: str = MISSING
    workers: int | None = MISSING

    def __post_init__(self) -> None:
        # Checked before the minutes of conversion, not after.
        require_choice("prenormalizer", self.prenormalizer, PRENORMALIZERS)
        require_choice("executor", self.executor, GATE_EXECUTOR_MODES)
        require_choice("compress", self.compress, COMPRESSIONS)
        require(self.window_seconds > 0, "window_seconds", self.window_seconds, "must be > 0")
        require(0 <= self.overlap_seconds < self.window_seconds, "overlap_seconds",
                self.overlap_seconds, f"must lie in [0, window_seconds={self.window_seconds})")
        if self.max_utterances is not None:
            require_at_least(self, 1, "max_utterances")
        require_share("min_identical", self.min_identical)
        require_at_least(self, 0, "max_wer_delta")
        if self.workers is not None:
            require_at_least(self, 1, "workers")


@dataclass
class DecodeSettings:
    """conf/decode/default.yaml: how CTC output becomes words (edge_conformer/decode/beam.py);
    beam_size null = greedy."""

    beam_size: int | None = MISSING
    beam_size_token: int | None = MISSING
    beam_threshold: float = MISSING
    lm_weight: float = MISSING
    word_score: float = MISSING
    lexicon: str | None = MISSING
    lm: str | None = MISSING

    def __post_init__(self) -> None:
        if self.beam_size is None:
            require(self.lexicon is None and self.lm is None, "beam_size", None,
                    "(greedy) cannot use a lexicon or LM: give a beam size")
            return
        require_at_least(self, 1, "beam_size")
        if self.beam_size_token is not None:
            require_at_least(self, 1, "beam_size_token")
        require(self.beam_threshold > 0, "beam_threshold", self.beam_threshold, "must be > 0")
        # The LM scores words, and only the lexicon tells the decoder where words are.
        require(self.lm is None or self.lexicon is not None, "lm", self.lm,
                "needs a lexicon: the LM scores the lexicon's words")


@dataclass
class ExportConfig:
    """conf/export.yaml: export.py's whole config."""

    ckpt: str = MISSING
    out: str = MISSING
    export: ExportSettings = MISSING
    # The beam search the parity report adds beside the gate's greedy WERs (conf/decode);
    # beam_size null (the default): greedy only.
    decode: DecodeSettings = MISSING


# ConfigStore names (group `schema`) the YAML defaults lists refer to.
SCHEMAS = {
    "train": TrainConfig,
    "export": ExportConfig,
    "data_digits": DigitsData,
    "data_librispeech": LibriSpeechData,
    "data_lhotse": LhotseData,
    "optim_adamw": AdamWConfig,
    "optim_sgd": SGDConfig,
    "schedule_cosine": CosineSchedule,
    "schedule_noam": NoamSchedule,
    "logger_wandb": WandbLoggerConfig,
    "logger_csv": CsvLoggerConfig,
}
