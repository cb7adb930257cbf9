"""The streaming package's interface: its named inputs, outputs and cache shapes, the `streaming`
section of frontend.json, and the host loop that drives a package chunk by chunk.

`stream.mlpackage` runs ONE fixed-shape function per chunk of C encoder frames (4C feature
frames). Everything a chunk needs from earlier ones comes in as explicit inputs and goes out as
`next_<name>` outputs, which the host feeds back as the next chunk's inputs:

    features         (1, n_mels, 1, 4C)         the chunk's log-mels, zero past the valid ones
    feature_mask     (1, 1, 1, 4C)              1.0 for the chunk's valid feature frames
    feature_cache    (1, n_mels, 1, 1)          the previous chunk's last feature frame
    half_rate_cache  (1, channels, F', 1)       the first subsampling conv's last output
    key_cache        (1, layers * d, 1, L)      un-rotated keys of the last L encoder frames,
    value_cache      (1, layers * d, 1, L)      layer i at channels [i * d, (i + 1) * d)
    conv_cache       (1, layers * d, 1, taps)   each layer's last depthwise-conv inputs
    cache_mask       (1, 1, 1, L)               1.0 for filled key/value slots
    -> logits        (1, vocab + 1, 1, C)       no log-softmax

The first chunk is the same function with zero caches and an all-zero cache_mask. Caches are
explicit inputs and outputs, not Core ML states: states are reported failing on the Neural
Engine (coremltools #2553, #2631). `StreamShapes` is the one definition of these names and
shapes: the graph (export/stream_graph.py), its conversion, frontend.json and `StreamPackage`
all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from edge_conformer.model.streaming import ChunkContext
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR, output_frames
from edge_conformer.runtime.frontend import StreamingLogMel
from edge_conformer.runtime.windowing import PackagePredict

if TYPE_CHECKING:
    from edge_conformer.data.features import LogMelFeatures
    from edge_conformer.model.conformer import ConformerCTC

STREAM_PACKAGE_DIR = "stream.mlpackage"
CHUNK_INPUTS = ("features", "feature_mask")
CACHES = (
    "feature_cache", "half_rate_cache", "key_cache", "value_cache", "conv_cache", "cache_mask",
)
LOGITS = "logits"
Shape = tuple[int, ...]
Arrays = dict[str, np.ndarray]


def next_name(cache: str) -> str:
    """The output that carries cache input `cache` to the next chunk."""
    return f"next_{cache}"


@dataclass(frozen=True)
class StreamShapes:
    """The fixed shapes of a streaming package for one model and chunk context."""

    n_mels: int
    chunk_frames: int  # C encoder frames per chunk
    left_frames: int  # L cached encoder frames
    layers: int
    d_model: int
    subsampling_channels: int
    half_rate_freq: int  # F': frequency bins after the first subsampling conv
    conv_taps: int  # past depthwise-conv inputs per layer
    num_logits: int  # vocab + 1

    @classmethod
    def of(cls, model: ConformerCTC, context: ChunkContext) -> StreamShapes:
        """The shapes for `model` streamed in `context`; ValueError naming the knob if the
        pair cannot make a fixed-shape package."""
        if model.conv_context == "symmetric":
            raise ValueError(
                "model.conv_context=symmetric is not streamable (its conv taps read the next "
                "chunk); export a model trained with model.conv_context=chunk or causal"
            )
        if context.left_frames < context.chunk_frames:
            raise ValueError(
                "a fixed-shape streaming package caches a finite left context of at least one "
                f"chunk: left_frames must be a multiple of chunk_frames ({context.chunk_frames}) "
                f"of at least one chunk, got {context.left_frames}"
            )
        if model.conv_cache_frames < 1:
            raise ValueError("model.conv_kernel_size=1 has no past conv taps to cache")
        sub = model.subsampling
        return cls(
            n_mels=sub.feat_dim,
            chunk_frames=context.chunk_frames,
            left_frames=context.left_frames,
            layers=len(model.blocks),
            d_model=model.d_model,
            subsampling_channels=sub.channels,
            half_rate_freq=sub.half_rate_freq,
            conv_taps=model.conv_cache_frames,
            num_logits=model.head.out_features,
        )

    @property
    def feature_frames(self) -> int:
        """Feature frames per chunk, 4C."""
        return SUBSAMPLING_FACTOR * self.chunk_frames

    def caches(self) -> dict[str, Shape]:
        """Cache input shapes by name, in `CACHES` order."""
        stacked = self.layers * self.d_model  # per-layer caches stacked along channels
        return {
            "feature_cache": (1, self.n_mels, 1, 1),
            "half_rate_cache": (1, self.subsampling_channels, self.half_rate_freq, 1),
            "key_cache": (1, stacked, 1, self.left_frames),
            "value_cache": (1, stacked, 1, self.left_frames),
            "conv_cache": (1, stacked, 1, self.conv_taps),
            "cache_mask": (1, 1, 1, self.left_frames),
        }

    def inputs(self) -> dict[str, Shape]:
        """Every input shape by name, in the graph's argument order."""
        return {
            "features": (1, self.n_mels, 1, self.feature_frames),
            "feature_mask": (1, 1, 1, self.feature_frames),
            **self.caches(),
        }

    def outputs(self) -> dict[str, Shape]:
        """Every output shape by name, in the graph's output order."""
        next_caches = {next_name(name): shape for name, shape in self.caches().items()}
        return {LOGITS: (1, self.num_logits, 1, self.chunk_frames), **next_caches}


def stream_description(
    model: ConformerCTC, context: ChunkContext, features: LogMelFeatures
) -> dict:
    """frontend.json's `streaming` section for `model` streamed in `context` over `features`.

    Algorithmic latency: a chunk's logits need all its 4C frames, and the last of them needs
    the front end's look-ahead (the right half of its analysis window) besides.
    """
    shapes = StreamShapes.of(model, context)
    lookahead_samples = StreamingLogMel(features).lookahead_samples  # rejects "utterance"
    settings = features.settings
    chunk_seconds = shapes.feature_frames / settings.frames_per_second
    return {
        "package": STREAM_PACKAGE_DIR,
        "chunk_frames": shapes.chunk_frames,
        "left_frames": shapes.left_frames,
        "feature_frames_per_chunk": shapes.feature_frames,
        "chunk_seconds": chunk_seconds,
        "left_seconds": SUBSAMPLING_FACTOR * shapes.left_frames / settings.frames_per_second,
        "algorithmic_latency_seconds": chunk_seconds + lookahead_samples / settings.sample_rate,
        "conv_context": model.conv_context,
        "caches": {
            name: {"shape": list(shape), "output": next_name(name)}
            for name, shape in shapes.caches().items()
        },
        "inputs": {name: list(shape) for name, shape in shapes.inputs().items()},
        "outputs": {name: list(shape) for name, shape in shapes.outputs().items()},
    }


class StreamPackage:
    """A streaming package driven chunk by chunk on the host.

    `predict` takes the named input arrays and returns the named outputs: Core ML's
    `MLModel.predict`, the MIL executor as `lambda inputs: executor(**inputs)`, or any
    callable of the same shape (the tests wrap the torch graph in one). `description` is
    frontend.json's `streaming` section (`stream_description`).
    """

    def __init__(self, predict: PackagePredict, description: Mapping) -> None:
        try:
            self.feature_frames = int(description["feature_frames_per_chunk"])
            self.n_mels = int(description["inputs"]["features"][1])
            self.cache_shapes = {
                name: tuple(cache["shape"]) for name, cache in description["caches"].items()
            }
            self.cache_outputs = {
                name: cache["output"] for name, cache in description["caches"].items()
            }
        except (KeyError, TypeError, IndexError, ValueError) as error:
            raise ValueError(
                f"not a streaming description (frontend.json 'streaming'): {error!r}"
            ) from error
        self.predict = predict

    def initial_caches(self) -> Arrays:
        """The caches before a stream's first chunk: all zero (every cache slot empty)."""
        return {name: np.zeros(shape, np.float32) for name, shape in self.cache_shapes.items()}

    def step(self, chunk_features: torch.Tensor, caches: Mapping[str, np.ndarray]) -> tuple[
        torch.Tensor, Arrays
    ]:
        """One chunk of k <= 4C feature frames (k, n_mels) -> logits of its valid encoder frames
        (ceil(k / 4), vocab + 1) and the caches for the next chunk. k < 4C only at a stream's
        end: the chunk is zero padded and its feature_mask marks the k valid frames."""
        logits, next_caches = self.step_rows([chunk_features], caches)
        return logits[0], next_caches

    def step_rows(self, chunks: list[torch.Tensor], caches: Mapping[str, np.ndarray]
                  ) -> tuple[list[torch.Tensor], Arrays]:
        """`step` for the chunks of several streams at once, their caches stacked as rows:
        one call of a `predict` that takes a batch (the executor's), one row per stream."""
        features = np.zeros((len(chunks), self.n_mels, 1, self.feature_frames), np.float32)
        feature_mask = np.zeros((len(chunks), 1, 1, self.feature_frames), np.float32)
        for row, chunk in enumerate(chunks):
            frames, n_mels = chunk.shape
            if not 0 < frames <= self.feature_frames or n_mels != self.n_mels:
                raise ValueError(
                    f"a chunk takes 1 to {self.feature_frames} frames of {self.n_mels} mels, "
                    f"got shape {tuple(chunk.shape)}"
                )
            features[row, :, 0, :frames] = chunk.detach().cpu().float().numpy().T
            feature_mask[row, ..., :frames] = 1.0
        outputs = self.predict({"features": features, "feature_mask": feature_mask, **caches})
        logits = np.asarray(outputs[LOGITS], dtype=np.float32)
        rows = [torch.from_numpy(logits[row, :, 0, : output_frames(chunk.shape[0])].T.copy())
                for row, chunk in enumerate(chunks)]
        next_caches = {
            name: np.asarray(outputs[output], dtype=np.float32)
            for name, output in self.cache_outputs.items()
        }
        return rows, next_caches


def stream_package_logits(package: StreamPackage, feats: torch.Tensor) -> torch.Tensor:
    """Logits (output_frames(T), vocab + 1) of one utterance's features (T, n_mels), streamed
    through `package` chunk by chunk from zero caches: in exact arithmetic what
    `edge_conformer.model.streaming.stream_logits` computes with the package's context."""
    return stream_package_logits_of(package, [feats])[0]


def stream_package_logits_of(package: StreamPackage, utterances: list[torch.Tensor]
                             ) -> list[torch.Tensor]:
    """`stream_package_logits` of several utterances, streamed side by side: their k-th chunks
    go through `package` in one call (a `predict` that takes a batch: the executor's), each
    with its own caches. An utterance whose chunks are done leaves the batch."""
    if any(feats.shape[0] == 0 for feats in utterances):
        raise ValueError("stream_package_logits: an utterance has no feature frames")
    chunk = package.feature_frames
    longest_first = sorted(range(len(utterances)), key=lambda i: -utterances[i].shape[0])
    caches = {name: np.concatenate([value] * len(utterances))
              for name, value in package.initial_caches().items()}
    pieces: list[list[torch.Tensor]] = [[] for _ in utterances]
    for start in range(0, utterances[longest_first[0]].shape[0], chunk):
        streaming = [i for i in longest_first if utterances[i].shape[0] > start]
        caches = {name: value[: len(streaming)] for name, value in caches.items()}
        logits, caches = package.step_rows(
            [utterances[i][start : start + chunk] for i in streaming], caches
        )
        for i, row in zip(streaming, logits, strict=True):
            pieces[i].append(row)
    return [torch.cat(rows) for rows in pieces]
