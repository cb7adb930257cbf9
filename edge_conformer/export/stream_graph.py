"""The Neural Engine graph of one streaming chunk: same weights, channels-first, explicit caches.

`build_stream_model` reads a trained `ConformerCTC` (conv_context chunk or causal) and returns an
`AneStreamingConformerCTC` computing what `ConformerCTC.forward_chunk` computes for one chunk of
C encoder frames with L frames of left context, with the fixed-shape named inputs and outputs of
`edge_conformer.runtime.stream_package` (`StreamShapes`, the one definition of them). One
function serves every chunk: the first gets zero caches and an all-zero cache_mask.

It reuses the offline layer rewrites of `edge_conformer.export.layers` (1x1 convs for linears,
heads as channel splits, einsum attention, pre-normalised norms, re-scaled softmax, finite
masks), with streaming variants only where a chunk reads its caches:
- subsampling: the feature and half-rate caches stand in for the convs' time padding;
- attention: keys and values of the window [cache; chunk]; the cache holds keys NOT rotated and
  the window is rotated by constant window-local tables (positions 0..L+C-1, queries at
  L..L+C-1). Rotary scores depend only on offsets, so this is the full forward's attention, and
  no angle grows with the stream's length (FP16 sin/cos of large angles would lose all bits);
- convolution: the depthwise conv runs with no padding of its own over [cache; chunk] (chunk
  context: plus k//2 zeros after the chunk, the future it may not see).

Every cache update is a slice or a concat along the last (frame) axis, the layer stacking a
split or concat along channels: no reshape or transpose beyond the offline graph's (the keys'
one per layer, the subsampling's two and the key bias's one), so the Neural Engine copies no
more than for an offline window, and every chunk costs the same.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_conformer.export.graph import key_padding_bias
from edge_conformer.export.layers import (
    CHANNELS,
    AneConformerBlock,
    AneConvolutionModule,
    AneSelfAttention,
    AneSubsampling,
    RotaryPositions,
    linear_to_conv,
)
from edge_conformer.model.attention import RotarySelfAttention
from edge_conformer.model.conformer import ConformerBlock, ConformerCTC
from edge_conformer.model.modules import ConvolutionModule
from edge_conformer.model.streaming import ChunkContext
from edge_conformer.model.subsampling import ConvSubsampling
from edge_conformer.numerics import PRENORMALIZERS
from edge_conformer.runtime.stream_package import StreamShapes

FRAMES = 3  # the frame axis of (B, C, 1, S) tensors, along which every cache slides


def keep_last(window: torch.Tensor, frames: int) -> torch.Tensor:
    """The last `frames` frames of a channels-first window: the next chunk's cache."""
    return window[..., window.shape[FRAMES] - frames :]


class AneChunkSubsampling(AneSubsampling):
    """The 4x conv subsampling of one chunk, its time padding taken from two caches.

    Encoder frame t reads first-conv outputs 2t-1..2t+1, and those read feature frames up to
    one before the chunk: `feature_cache` (B, F, 1, 1) and `half_rate_cache` (B, C, F', 1) hold
    them (zeros at a stream's start, which is exactly the convs' zero padding). The convs keep
    their frequency padding and lose the time padding; the caches are concatenated along the
    frame axis, so the layout stays the offline one (see AneSubsampling).
    """

    def __init__(self, subsampling: ConvSubsampling) -> None:
        super().__init__(subsampling)
        # The 3x3 stride-2 convs (swapped: frequency on height, time on width); the depthwise
        # kind's 1x1 pointwise pads nothing anyway.
        time_padded = (self.conv1, self.conv2 if subsampling.kind == "regular" else self.conv2[0])
        for conv in time_padded:
            conv.padding = (conv.padding[0], 0)

    def forward(
        self, features: torch.Tensor, half_rate_mask: torch.Tensor, feature_cache: torch.Tensor,
        half_rate_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked features (B, F, 1, 4C) -> frames (B, d_model, 1, C), next feature cache and
        next half-rate cache."""
        window = torch.cat([feature_cache, features], dim=FRAMES)  # (B, F, 1, 4C + 1)
        half_rate = self.half_rate(window, half_rate_mask)  # (B, C, F', 2C)
        frames = self.encoder_frames(torch.cat([half_rate_cache, half_rate], dim=FRAMES))
        return frames, keep_last(window, 1), keep_last(half_rate, 1)


class AneChunkSelfAttention(AneSelfAttention):
    """Rotary self-attention of a chunk's C queries over the window [L cached; C new] frames.

    The keys' rotary table and the softmax span the window; the queries' table holds only its
    last C positions. Cached keys come in un-rotated and are rotated with the window, so the
    tables are constants of the graph.
    """

    def __init__(
        self, attn: RotarySelfAttention, context: ChunkContext, softmax_rescale: bool
    ) -> None:
        window = context.left_frames + context.chunk_frames
        super().__init__(attn, window, softmax_rescale)
        self.query_rotary = RotaryPositions(
            window, attn.head_dim, head_axis=CHANNELS, first_frame=context.left_frames
        )

    def forward(
        self, x: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
        key_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, d, 1, C); caches (B, d, 1, L); key_bias (1, L + C, 1, 1) -> outputs (B, d, 1,
        C) and the window's un-rotated keys and values (B, d, 1, L + C)."""
        keys = torch.cat([key_cache, self.k_proj(x)], dim=FRAMES)
        values = torch.cat([value_cache, self.v_proj(x)], dim=FRAMES)
        return self.attend(self.q_proj(x), keys, values, key_bias), keys, values


class AneChunkConvolutionModule(AneConvolutionModule):
    """The convolution module of one chunk, its past taps read from the conv cache.

    The depthwise conv pads nothing: [cache; chunk] supplies the k//2 (chunk) or k-1 (causal)
    past frames, and the chunk context's k//2 future taps past the chunk's end read zeros
    appended after it (one pad op), as forward_chunk's chunk context defines.
    """

    def __init__(self, conv: ConvolutionModule) -> None:
        super().__init__(conv)
        kernel = conv.depthwise.kernel_size[0]
        self.cache_frames = conv.cache_frames
        self.future_zeros = kernel - 1 - conv.cache_frames
        self.depthwise.padding = (0, 0)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor, conv_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, d, 1, C); conv_cache (B, d, 1, taps) -> outputs (B, d, 1, C), next cache."""
        window = torch.cat([conv_cache, self.depthwise_inputs(x, frame_mask)], dim=FRAMES)
        padded = nn.functional.pad(window, (0, self.future_zeros)) if self.future_zeros else window
        return self.outputs(self.depthwise(padded)), keep_last(window, self.cache_frames)


class AneChunkConformerBlock(AneConformerBlock):
    """A Conformer block on one chunk: the offline block with the streaming branches."""

    def __init__(
        self, block: ConformerBlock, context: ChunkContext, prenormalizer: str,
        softmax_rescale: bool,
    ) -> None:
        window = context.left_frames + context.chunk_frames
        super().__init__(block, window, prenormalizer, softmax_rescale)
        self.left_frames = context.left_frames
        self.attn = AneChunkSelfAttention(block.attn, context, softmax_rescale)
        self.conv = AneChunkConvolutionModule(block.conv)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor, key_bias: torch.Tensor,
        key_cache: torch.Tensor, value_cache: torch.Tensor, conv_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One chunk x (B, d, 1, C) with this layer's caches -> its outputs and the layer's
        next (key, value, conv) caches."""
        caches: dict[str, torch.Tensor] = {}

        def attend(h: torch.Tensor) -> torch.Tensor:
            out, keys, values = self.attn(h, key_cache, value_cache, key_bias)
            caches["keys"] = keep_last(keys, self.left_frames)
            caches["values"] = keep_last(values, self.left_frames)
            return out

        def convolve(h: torch.Tensor) -> torch.Tensor:
            out, caches["conv"] = self.conv(h, frame_mask, conv_cache)
            return out

        x = self.residual_branches(x, attend, convolve)
        return x, (caches["keys"], caches["values"], caches["conv"])


class AneStreamingConformerCTC(nn.Module):
    """Channels-first Conformer-CTC for one streaming chunk (I/O: `StreamShapes`)."""

    def __init__(
        self, model: ConformerCTC, context: ChunkContext, *, prenormalizer: str,
        softmax_rescale: bool,
    ) -> None:
        super().__init__()
        self.shapes = StreamShapes.of(model, context)
        self.left_frames = context.left_frames
        self.d_model = model.d_model
        self.subsampling = AneChunkSubsampling(model.subsampling)
        self.blocks = nn.ModuleList(
            AneChunkConformerBlock(block, context, prenormalizer, softmax_rescale)
            for block in model.blocks
        )
        self.head = linear_to_conv(model.head)

    def forward(
        self, features: torch.Tensor, feature_mask: torch.Tensor, feature_cache: torch.Tensor,
        half_rate_cache: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
        conv_cache: torch.Tensor, cache_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The inputs of `StreamShapes.inputs()` -> logits and the next caches, in the order of
        `StreamShapes.outputs()`."""
        half_rate_mask = feature_mask[..., ::2]  # valid outputs of the first stride-2 conv
        frame_mask = half_rate_mask[..., ::2]  # the chunk's valid encoder frames (1, 1, 1, C)
        x, next_feature_cache, next_half_rate_cache = self.subsampling(
            features * feature_mask, half_rate_mask, feature_cache, half_rate_cache
        )
        window_mask = torch.cat([cache_mask, frame_mask], dim=FRAMES)  # (1, 1, 1, L + C)
        key_bias = key_padding_bias(window_mask)  # empty slots and padding: -1e4
        per_layer = zip(
            self.blocks, *(cache.split(self.d_model, dim=CHANNELS)
                           for cache in (key_cache, value_cache, conv_cache)),
            strict=True,
        )
        layer_caches = []
        for block, keys, values, conv in per_layer:
            x, caches = block(x, frame_mask, key_bias, keys, values, conv)
            layer_caches.append(caches)
        next_keys, next_values, next_conv = (
            torch.cat(layer, dim=CHANNELS) for layer in zip(*layer_caches, strict=True)
        )
        return (
            self.head(x), next_feature_cache, next_half_rate_cache, next_keys, next_values,
            next_conv, keep_last(window_mask, self.left_frames),
        )


def build_stream_model(
    model: ConformerCTC,
    context: ChunkContext,
    *,
    prenormalizer: str = "mad",
    softmax_rescale: bool = True,
) -> AneStreamingConformerCTC:
    """Build the streaming chunk graph from a trained model's weights (copied, never shared).

    BatchNorm is folded with its running statistics, so the result is the eval-mode model;
    `prenormalizer` and `softmax_rescale` as in `build_ane_model`. ValueError naming the knob
    when the model or context cannot stream with fixed shapes (see `StreamShapes.of`).
    """
    if prenormalizer not in PRENORMALIZERS:
        raise ValueError(f"prenormalizer must be one of {PRENORMALIZERS}, got {prenormalizer!r}")
    stream_model = AneStreamingConformerCTC(
        model, context, prenormalizer=prenormalizer, softmax_rescale=softmax_rescale
    )
    return stream_model.eval().requires_grad_(False)
