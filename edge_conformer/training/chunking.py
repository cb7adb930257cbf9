"""Dynamic chunk training (WeNet U2++): a chunk context drawn per training batch.

A share of the batches trains at full context (the offline model), the others under a chunk
mask with a chunk size and left context drawn from the config's lists, so one model serves
both offline and at any of those streaming settings. Draws come from a generator seeded with
(seed, global step), never from the global RNG: a resumed run draws what the uninterrupted run
drew, and dropout masks (global RNG) are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from edge_conformer.model.streaming import ChunkContext

KNOB = "model.streaming"


@dataclass(frozen=True)
class DynamicChunks:
    """The `model.streaming` config block (conf/model/*.yaml); units are encoder frames."""

    enabled: bool = False
    full_context_share: float = 0.5  # share of training batches at full context
    # Steps before this one all train at full context: the model learns the task offline
    # first, then the chunk masks (0: chunks from the first step, as WeNet).
    chunks_from_step: int = 0
    chunk_sizes: tuple[int, ...] = (4, 8, 16, 32)
    left_contexts: tuple[int, ...] = (32, 64, -1)  # -1: unlimited
    eval_chunk: int = 16  # the deployed setting, validated as val/wer_stream
    eval_left: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.full_context_share <= 1.0:
            raise ValueError(
                f"{KNOB}.full_context_share must lie in [0, 1], got {self.full_context_share}"
            )
        if self.chunks_from_step < 0:
            raise ValueError(f"{KNOB}.chunks_from_step must be >= 0, got {self.chunks_from_step}")
        if not self.chunk_sizes or min(self.chunk_sizes) < 1:
            raise ValueError(f"{KNOB}.chunk_sizes must be positive, got {self.chunk_sizes}")
        if not self.left_contexts or min(self.left_contexts) < -1:
            raise ValueError(f"{KNOB}.left_contexts must be >= -1, got {self.left_contexts}")
        try:
            ChunkContext(self.eval_chunk, self.eval_left)
        except ValueError as error:
            raise ValueError(f"{KNOB}.eval_chunk/eval_left: {error}") from None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> DynamicChunks:
        """From the config block (None or absent: disabled); unknown keys are an error."""
        config = dict(config or {})
        unknown = set(config) - {field.name for field in fields(cls)}
        if unknown:
            raise ValueError(f"{KNOB}: unknown keys {sorted(unknown)}")
        for key in ("chunk_sizes", "left_contexts"):
            if key in config:
                config[key] = tuple(config[key])
        return cls(**config)

    @property
    def eval_context(self) -> ChunkContext:
        return ChunkContext(self.eval_chunk, self.eval_left)

    def draw(self, seed: int, step: int) -> ChunkContext | None:
        """The training context of global step `step`: None (full context) or a ChunkContext.

        A left context that is not a multiple of the drawn chunk is rounded down to one, and
        to at least one chunk.
        """
        if step < self.chunks_from_step:
            return None
        generator = torch.Generator().manual_seed(_step_seed(seed, step))
        if torch.rand((), generator=generator) < self.full_context_share:
            return None
        chunk = self.chunk_sizes[_index(len(self.chunk_sizes), generator)]
        left = self.left_contexts[_index(len(self.left_contexts), generator)]
        if left >= 0:
            left = max(chunk, left - left % chunk)
        return ChunkContext(chunk, left)


def _step_seed(seed: int, step: int) -> int:
    """One generator seed per (run seed, step): distinct pairs give distinct seeds while
    steps stay below a million."""
    return (seed * 1_000_003 + step) % 2**63


def _index(size: int, generator: torch.Generator) -> int:
    return int(torch.randint(size, (), generator=generator))
