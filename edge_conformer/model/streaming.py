"""Streaming geometry: chunk contexts, chunk attention masks, the chunk loop's caches.

Units are ENCODER frames (after 4x subsampling; 40 ms each at 10 ms hops). A `ChunkContext`
splits the encoder frames into chunks of `chunk_frames`; a frame attends to every frame of
its own chunk and of the `left_frames` frames before that chunk (all earlier ones at -1).
The masked full forward (`ConformerCTC.forward(..., context)`) trains and evaluates exactly
what the chunk loop (`ConformerCTC.forward_chunk` over a `StreamingState`) computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR, output_frames

if TYPE_CHECKING:
    from edge_conformer.model.conformer import ConformerCTC


@dataclass(frozen=True)
class ChunkContext:
    """Chunks of `chunk_frames` encoder frames, each seeing `left_frames` earlier ones (-1: all)."""

    chunk_frames: int
    left_frames: int = -1

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {self.chunk_frames}")
        if self.left_frames < -1 or (self.left_frames > 0 and self.left_frames % self.chunk_frames):
            raise ValueError(
                f"left_frames must be -1 (unlimited) or a multiple of chunk_frames "
                f"({self.chunk_frames}), got {self.left_frames}"
            )

    @property
    def feature_frames(self) -> int:
        """Feature frames per chunk (before subsampling)."""
        return SUBSAMPLING_FACTOR * self.chunk_frames

    def covers(self, frames: int) -> bool:
        """True when one chunk spans all `frames` with unlimited left: full context."""
        return self.chunk_frames >= frames and self.left_frames < 0


def with_own_key(allowed: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Let each query row with no allowed key attend its own frame, key `offset + query`.

    Only padded queries can be left without keys (a valid frame always sees itself); their
    outputs are ignored, but a row of all-masked scores would make softmax produce NaN, and
    NaN times a zero weight still poisons gradients.
    """
    queries, keys = allowed.shape[-2:]
    own = torch.arange(keys, device=allowed.device) == (
        torch.arange(queries, device=allowed.device)[:, None] + offset
    )
    return allowed | (own & ~allowed.any(dim=-1, keepdim=True))


def chunk_attention_mask(padding: torch.Tensor, context: ChunkContext | None) -> torch.Tensor:
    """Attention mask (True = attend) for encoder frames with `padding` (B, T), True at padding.

    Full context (None, or one chunk spanning T with unlimited left) gives the key-padding
    mask (B, 1, 1, T) the offline model has always used (so the fused attention path and its
    results stay exactly as they were); a chunk context gives (B, 1, T, T): query i in chunk
    c = i // chunk attends key j when j // chunk <= c, j >= c * chunk - left (left >= 0) and j
    is a valid frame.
    """
    keys_valid = ~padding
    frames = padding.shape[1]
    if context is None or context.covers(frames):
        return keys_valid[:, None, None, :]
    position = torch.arange(frames, device=padding.device)
    chunk_start = position - position % context.chunk_frames
    # Keys before the end of the query's chunk: j // chunk <= i // chunk.
    allowed = position[None, :] < chunk_start[:, None] + context.chunk_frames
    if context.left_frames >= 0:
        allowed &= position[None, :] >= chunk_start[:, None] - context.left_frames
    return with_own_key(allowed[None] & keys_valid[:, None, :])[:, None]


def keep_last(window: torch.Tensor, frames: int, dim: int) -> torch.Tensor:
    """The last `frames` entries of `window` along `dim` (all of them when `frames` is -1)."""
    if frames < 0:
        return window
    return window.narrow(dim, window.shape[dim] - frames, frames)


@dataclass(frozen=True)
class StreamingState:
    """Everything `ConformerCTC.forward_chunk` carries from one chunk to the next.

    The first chunk gets zero caches with every cache slot invalid, and runs through the same
    code as every later chunk: zeros are exactly the convolutions' padding at a stream's start,
    and invalid attention slots are masked out. For a finite left context the shapes never
    change, so a chunk costs the same at any point of a stream.
    """

    context: ChunkContext
    features: torch.Tensor  # (B, 1, n_mels): the previous chunk's last feature frame
    half_rate: torch.Tensor  # (B, channels, 1, F'): the first subsampling conv's last output
    keys: torch.Tensor  # (layers, B, L, d_model): the last L frames' keys, NOT rotated
    values: torch.Tensor  # (layers, B, L, d_model)
    key_valid: torch.Tensor  # (B, L) bool: False for slots before the stream's first frame
    conv: torch.Tensor  # (layers, B, d_model, taps): the depthwise conv's last inputs

    @classmethod
    def initial(
        cls, model: ConformerCTC, context: ChunkContext, batch: int = 1
    ) -> StreamingState:
        """Zero caches, all slots invalid: the state before a stream's first chunk."""
        param = next(model.parameters())
        like = {"device": param.device, "dtype": param.dtype}
        layers, slots = len(model.blocks), max(context.left_frames, 0)
        sub = model.subsampling
        return cls(
            context=context,
            features=torch.zeros(batch, 1, sub.feat_dim, **like),
            half_rate=torch.zeros(batch, sub.channels, 1, sub.half_rate_freq, **like),
            keys=torch.zeros(layers, batch, slots, model.d_model, **like),
            values=torch.zeros(layers, batch, slots, model.d_model, **like),
            key_valid=torch.zeros(batch, slots, dtype=torch.bool, device=param.device),
            conv=torch.zeros(layers, batch, model.d_model, model.conv_cache_frames, **like),
        )


@torch.no_grad()
def stream_logits(
    model: ConformerCTC,
    feats: torch.Tensor,
    context: ChunkContext,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run `model.forward_chunk` chunk by chunk over whole utterances; return their logits.

    feats: (T, n_mels) for one utterance -> (S, vocab + 1), or (B, T, n_mels) with `lengths`
    -> (B, S, vocab + 1); S = output_frames(T) and frames past an utterance's own
    `subsampled_lengths` are padding, as in the full forward.
    """
    single = feats.dim() == 2
    if single:
        feats = feats[None]
        lengths = torch.tensor([feats.shape[1]], device=feats.device)
    elif lengths is None:
        raise ValueError("stream_logits: batched feats (B, T, n_mels) need their lengths")
    frames, step = feats.shape[1], context.feature_frames
    num_chunks = -(-frames // step)
    feats = torch.nn.functional.pad(feats, (0, 0, 0, num_chunks * step - frames))
    state = StreamingState.initial(model, context, batch=feats.shape[0])
    chunks = []
    for start in range(0, num_chunks * step, step):
        valid = (lengths - start).clamp(0, step)
        logits, state = model.forward_chunk(feats[:, start : start + step], state, valid)
        chunks.append(logits)
    logits = torch.cat(chunks, dim=1)[:, : output_frames(frames)]
    return logits[0] if single else logits
