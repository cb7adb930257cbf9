"""Channels-first rewrites of the Conformer-CTC layers for the Apple Neural Engine.

Each module here is built from one trained layer of `edge_conformer.model` and computes the
same function on (B, C, 1, S) tensors: channels on axis 1, frames on the last axis, which is
the layout the Neural Engine tiles natively (Apple, "Deploying Transformers on the Apple Neural
Engine", and its ml-ane-transformers reference modules). Weights are copied (and where useful
pre-multiplied by constants) so the rewrite never shares storage with the training model.

Rules every module keeps, because each violation costs the Neural Engine a memory copy or a
numerical failure in FP16:
- a Linear is a 1x1 Conv2d: on (B, C, 1, S) that is the same affine map per frame, and the
  Neural Engine runs convolutions natively where a matmul on a transposed tensor needs copies;
- no reshapes, and one transpose per block (the keys, see AneSelfAttention): heads are
  channel slices (split/cat on axis 1) and attention contracts with einsum in the form that
  converts to one native `einsum` op, not a batched matmul surrounded by copies;
- masks are large finite negatives, never -inf (-inf - -inf is NaN once scores saturate);
- norms and softmax use the overflow-safe forms of `edge_conformer.numerics`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edge_conformer.model.attention import RotarySelfAttention
from edge_conformer.model.conformer import ConformerBlock
from edge_conformer.model.modules import ConvolutionModule, FeedForward
from edge_conformer.model.norms import MADNorm
from edge_conformer.model.rotary import rotary_tables
from edge_conformer.model.subsampling import ConvSubsampling
from edge_conformer.numerics import (
    conditional_rescaled_softmax,
    softmax_threshold,
    stable_layer_norm,
    stable_mad_norm,
)
from edge_conformer.numerics.formats import FP16

CHANNELS = 1  # the channel axis of (B, C, 1, S) tensors
KEYS = 1  # the key axis of attention scores laid out (B, S_keys, 1, S_queries)
KEY_CHANNELS = 3  # the channel axis of keys transposed to (B, S, 1, C) for the einsum
Branch = Callable[[torch.Tensor], torch.Tensor]  # a block branch: normalised input -> output


# ---------------------------------------------------------------------------------------------
# Weight conversion helpers


def pointwise_conv(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: float = 1.0
) -> nn.Conv2d:
    """A 1x1 Conv2d applying `scale * (weight @ x + bias)` to every frame of (B, C_in, 1, S)."""
    out_channels, in_channels = weight.shape
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(scale * weight[:, :, None, None])
        if bias is not None:
            conv.bias.copy_(scale * bias)
    return conv


def linear_to_conv(linear: nn.Linear, scale: float = 1.0) -> nn.Conv2d:
    """`scale * linear(x)` per frame, as a 1x1 Conv2d on (B, C_in, 1, S)."""
    return pointwise_conv(linear.weight, linear.bias, scale)


def conv1d_to_conv(conv: nn.Conv1d) -> nn.Conv2d:
    """A kernel-size-1 Conv1d on (B, C, T) as a 1x1 Conv2d on (B, C, 1, S)."""
    if conv.kernel_size != (1,):
        raise ValueError(f"expected a pointwise Conv1d, got kernel {conv.kernel_size}")
    return pointwise_conv(conv.weight[:, :, 0], conv.bias)


def swap_spatial_axes(conv: nn.Conv2d) -> nn.Conv2d:
    """The Conv2d that computes `conv` on inputs whose height and width are swapped.

    conv(x.transpose(2, 3)) == swap_spatial_axes(conv)(x).transpose(2, 3): transposing the
    kernel (and every per-axis hyper-parameter) moves the transpose off the data.
    """
    swapped = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size[::-1],
        stride=conv.stride[::-1],
        padding=conv.padding[::-1],
        dilation=conv.dilation[::-1],
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        swapped.weight.copy_(conv.weight.transpose(2, 3))
        if conv.bias is not None:
            swapped.bias.copy_(conv.bias)
    return swapped


def depthwise_with_batch_norm(
    depthwise: nn.Conv1d, batch_norm: nn.BatchNorm1d, padding: int
) -> nn.Conv2d:
    """Depthwise Conv1d followed by eval-mode BatchNorm, as one (1, k) depthwise Conv2d that
    zero pads `padding` frames on either side (the caller decides: the training module's
    `depthwise.padding` is symmetric whatever its conv_context).

    BatchNorm at inference is the per-channel affine map x * g + h with g = gamma / sqrt(var +
    eps) and h = beta - mean * g; it commutes into the conv's per-channel weight and bias, so
    the Neural Engine runs no separate normalisation op.
    """
    channels, _, kernel = depthwise.weight.shape
    gain = batch_norm.weight / torch.sqrt(batch_norm.running_var + batch_norm.eps)
    shift = batch_norm.bias - batch_norm.running_mean * gain
    conv = nn.Conv2d(
        channels, channels, kernel_size=(1, kernel), padding=(0, padding), groups=channels
    )
    with torch.no_grad():
        conv.weight.copy_(depthwise.weight[:, :, None, :] * gain[:, None, None, None])
        conv.bias.copy_(depthwise.bias * gain + shift)
    return conv


# ---------------------------------------------------------------------------------------------
# Norm and softmax


class ChannelNorm(nn.Module):
    """The block's LayerNorm (`l2`) or MADNorm (`mad`) over the channel axis, overflow-safe.

    The pre-normaliser divides by a cheap statistic before the norm's own statistic is formed,
    so no square (l2) or sum (both) can leave the FP16 range; the norm is scale invariant, so
    in exact arithmetic the result is unchanged (eps is rescaled inside the numerics module).
    """

    def __init__(self, norm: nn.Module, prenormalizer: str) -> None:
        super().__init__()
        if isinstance(norm, nn.LayerNorm):
            self.kind = "l2"
        elif isinstance(norm, MADNorm):
            self.kind = "mad"
        else:
            raise TypeError(f"no channels-first rewrite for {type(norm).__name__}")
        self.eps = norm.eps
        self.prenormalizer = prenormalizer
        self.weight = nn.Parameter(norm.weight.detach().clone())
        self.bias = nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "l2":
            return stable_layer_norm(
                x, self.weight, self.bias, self.eps, dim=CHANNELS, p=2.0,
                prenormalizer=self.prenormalizer, fmt=FP16,
            )
        return stable_mad_norm(
            x, self.weight, self.bias, self.eps, dim=CHANNELS,
            prenormalizer=self.prenormalizer, fmt=FP16,
        )


class KeySoftmax(nn.Module):
    """Softmax over the key axis of (B, S_keys, 1, S_queries) attention scores.

    With `rescale`, the conditionally re-scaled softmax keeps every exp argument inside the
    domain the Neural Engine's lookup-table exp covers in FP16; without it, plain softmax (the
    reference for checking that the rescaling changes nothing in exact arithmetic).
    """

    def __init__(self, num_keys: int, rescale: bool) -> None:
        super().__init__()
        self.rescale = rescale
        self.threshold = softmax_threshold(num_keys, FP16) if rescale else None

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        if self.rescale:
            return conditional_rescaled_softmax(scores, dim=KEYS, threshold=self.threshold)
        return torch.softmax(scores, dim=KEYS)


# ---------------------------------------------------------------------------------------------
# Conformer block branches


class AneFeedForward(nn.Module):
    """FeedForward (Linear -> Swish -> Linear) as 1x1 convs, times its residual weight.

    The macaron half-step (0.5 * FFN) is folded into the second projection's weight and bias,
    which saves one multiply per branch.
    """

    def __init__(self, ff: FeedForward, residual_weight: float) -> None:
        super().__init__()
        self.linear1 = linear_to_conv(ff.linear1)
        self.linear2 = linear_to_conv(ff.linear2, scale=residual_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(nn.functional.silu(self.linear1(x)))


class RotaryPositions(nn.Module):
    """Rotary positions for one head, as multiplies by constant cos/sin tables.

    `head_axis` is the axis holding the head's channels: 1 for queries (B, head_dim, 1, S),
    3 for the transposed keys (B, S, 1, head_dim). The tables are laid out to match, so the
    rotation is a split, a concat and two multiplies along that axis (see model/rotary.py).
    The tables hold positions first_frame..num_frames-1 (a streaming chunk's queries sit at
    the end of their window).
    """

    def __init__(
        self, num_frames: int, head_dim: int, head_axis: int, first_frame: int = 0
    ) -> None:
        super().__init__()
        self.head_axis = head_axis
        self.half = head_dim // 2
        cos, sin = (table[first_frame:] for table in rotary_tables(num_frames, head_dim))
        # rotate_half(x) * sin == cat([-x2, x1]) * sin == cat([x2, x1]) * signed_sin where
        # signed_sin negates the first half: the sign rides on the constant, not on the data.
        signed_sin = torch.cat([-sin[:, : self.half], sin[:, self.half :]], dim=1)
        if head_axis == CHANNELS:
            cos, signed_sin = cos.T, signed_sin.T
        self.register_buffer("cos", cos[None, :, None, :].contiguous())
        self.register_buffer("signed_sin", signed_sin[None, :, None, :].contiguous())

    def forward(self, head: torch.Tensor) -> torch.Tensor:
        first, second = head.split(self.half, dim=self.head_axis)
        swapped = torch.cat([second, first], dim=self.head_axis)
        return head * self.cos + swapped * self.signed_sin


class AneSelfAttention(nn.Module):
    """Rotary multi-head self-attention, one head at a time, contracted with einsum.

    Heads are channel slices of the 1x1-conv projections (torch.split, no reshape). The Neural
    Engine's einsum contracts the last axis of its first operand with axis 1 of its second
    ("nchw,nwhu->nchu"), so the keys are transposed once per layer to (B, S, 1, C), as in
    Apple's ml-ane-transformers: scores are then einsum('bchq,bkhc->bkhq') and the output
    einsum('bkhq,bchk->bchq'), both single native einsum ops. (Written without the transpose,
    'bchq,bchk->bkhq' is lowered by coremltools to three transposes, three reshapes and a
    batched matmul per head.) Scores keep keys on axis 1, where the softmax runs and where the
    key-padding bias (shape (1, S, 1, 1)) broadcasts.
    """

    def __init__(self, attn: RotarySelfAttention, num_frames: int, softmax_rescale: bool) -> None:
        super().__init__()
        self.head_dim = attn.head_dim
        # 1/sqrt(head_dim) goes into the query weights: the products q.k then stay small
        # enough for FP16 (QK^T can exceed 65504 otherwise) and no scaling op is needed.
        # Rotary positions are linear in q, so scaling before them is exact.
        self.q_proj = linear_to_conv(attn.q_proj, scale=attn.head_dim**-0.5)
        self.k_proj = linear_to_conv(attn.k_proj)
        self.v_proj = linear_to_conv(attn.v_proj)
        self.out_proj = linear_to_conv(attn.out_proj)
        self.query_rotary = RotaryPositions(num_frames, attn.head_dim, head_axis=CHANNELS)
        self.key_rotary = RotaryPositions(num_frames, attn.head_dim, head_axis=KEY_CHANNELS)
        self.softmax = KeySoftmax(num_keys=num_frames, rescale=softmax_rescale)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """x: (B, C, 1, S); key_bias: (1, S, 1, 1), 0 for valid keys and -1e4 for padding."""
        return self.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), key_bias)

    def attend(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        key_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Projected queries (B, C, 1, S_q), keys and values (B, C, 1, S_k) -> the attention's
        output (B, C, 1, S_q); key_bias (1, S_k, 1, 1)."""
        queries = queries.split(self.head_dim, dim=CHANNELS)
        keys = keys.transpose(CHANNELS, KEY_CHANNELS).split(self.head_dim, KEY_CHANNELS)
        values = values.split(self.head_dim, dim=CHANNELS)
        contexts = []
        for q, k, v in zip(queries, keys, values, strict=True):
            scores = torch.einsum("bchq,bkhc->bkhq", self.query_rotary(q), self.key_rotary(k))
            weights = self.softmax(scores + key_bias)
            contexts.append(torch.einsum("bkhq,bchk->bchq", weights, v))
        return self.out_proj(torch.cat(contexts, dim=CHANNELS))


class AneConvolutionModule(nn.Module):
    """Pointwise -> GLU -> depthwise (BatchNorm folded in) -> Swish -> pointwise, channels-first.

    GLU is written as split + sigmoid + mul, which is what it lowers to anyway, so the graph
    reads the same before and after conversion.

    The depthwise conv's zeros follow `model.conv_context` over one window: symmetric, and
    chunk (the window is one chunk, so chunk equals symmetric), pad k//2 on both sides inside
    the conv op itself; causal pads k-1 zeros on the left only, one pad op before a conv that
    pads nothing.
    """

    def __init__(self, conv: ConvolutionModule) -> None:
        super().__init__()
        kernel = conv.depthwise.kernel_size[0]
        self.causal_zeros = conv.cache_frames if conv.context == "causal" else 0
        self.pointwise1 = conv1d_to_conv(conv.pointwise1)
        self.depthwise = depthwise_with_batch_norm(
            conv.depthwise, conv.batch_norm, padding=0 if self.causal_zeros else kernel // 2
        )
        self.pointwise2 = conv1d_to_conv(conv.pointwise2)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, C, 1, S); frame_mask: (1, 1, 1, S), 1 for valid frames and 0 for padding."""
        x = self.depthwise_inputs(x, frame_mask)
        if self.causal_zeros:
            x = nn.functional.pad(x, (self.causal_zeros, 0))
        return self.outputs(self.depthwise(x))

    def depthwise_inputs(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Pointwise and GLU, padded frames zeroed: what the depthwise conv reads."""
        content, gate = self.pointwise1(x).chunk(2, dim=CHANNELS)
        # Zero padded frames right before the depthwise conv, as the training graph does: its
        # kernel then sees at a padded tail what it sees at the end of an unpadded utterance.
        return content * torch.sigmoid(gate) * frame_mask

    def outputs(self, depthwise_outputs: torch.Tensor) -> torch.Tensor:
        """Swish and the last pointwise conv after the depthwise conv (BatchNorm folded in)."""
        return self.pointwise2(nn.functional.silu(depthwise_outputs))


class AneConformerBlock(nn.Module):
    """Macaron FFN/2 -> MHSA -> Conv -> FFN/2 -> norm, each branch pre-normalised and residual."""

    def __init__(
        self, block: ConformerBlock, num_frames: int, prenormalizer: str, softmax_rescale: bool
    ) -> None:
        super().__init__()
        self.norm_ff1 = ChannelNorm(block.norm_ff1, prenormalizer)
        self.ff1 = AneFeedForward(block.ff1, residual_weight=0.5)
        self.norm_attn = ChannelNorm(block.norm_attn, prenormalizer)
        self.attn = AneSelfAttention(block.attn, num_frames, softmax_rescale)
        self.norm_conv = ChannelNorm(block.norm_conv, prenormalizer)
        self.conv = AneConvolutionModule(block.conv)
        self.norm_ff2 = ChannelNorm(block.norm_ff2, prenormalizer)
        self.ff2 = AneFeedForward(block.ff2, residual_weight=0.5)
        self.norm_out = ChannelNorm(block.norm_out, prenormalizer)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor, key_bias: torch.Tensor
    ) -> torch.Tensor:
        return self.residual_branches(
            x,
            attend=lambda h: self.attn(h, key_bias),
            convolve=lambda h: self.conv(h, frame_mask),
        )

    def residual_branches(
        self, x: torch.Tensor, attend: Branch, convolve: Branch
    ) -> torch.Tensor:
        """The block around its attention and convolution branches (which a streaming block
        calls with its caches)."""
        x = x + self.ff1(self.norm_ff1(x))
        x = x + attend(self.norm_attn(x))
        x = x + convolve(self.norm_conv(x))
        x = x + self.ff2(self.norm_ff2(x))
        return self.norm_out(x)


# ---------------------------------------------------------------------------------------------
# Front end


class AneSubsampling(nn.Module):
    """Log-mel (1, F, 1, T) -> frames (1, d_model, 1, S): the 4x conv subsampling, channels-first.

    The training convs run on (B, 1, T, F) images (time as height). Here the features are
    viewed as (B, 1, F, T) -- a free reshape, the elements are already in that order -- and
    every kernel is transposed instead (swap_spatial_axes), so the convs produce (B, C, F/4,
    S) with time on the last axis, where the rest of the graph wants it, and no data transpose
    runs at all. Flattening (C, F/4) then gives channel index c * F/4 + f, the training
    flatten order, and the linear becomes a 1x1 conv.
    """

    def __init__(self, subsampling: ConvSubsampling) -> None:
        super().__init__()
        self.conv1 = swap_spatial_axes(subsampling.conv1)
        if subsampling.kind == "regular":
            self.conv2 = swap_spatial_axes(subsampling.conv2)
        else:
            depthwise, pointwise = subsampling.conv2
            self.conv2 = nn.Sequential(swap_spatial_axes(depthwise), swap_spatial_axes(pointwise))
        self.out = linear_to_conv(subsampling.out)

    def forward(self, features: torch.Tensor, half_rate_mask: torch.Tensor) -> torch.Tensor:
        """features: (B, F, 1, T); half_rate_mask: (1, 1, 1, T/2), 1 where conv1 output is valid."""
        return self.encoder_frames(self.half_rate(features, half_rate_mask))

    def half_rate(self, features: torch.Tensor, half_rate_mask: torch.Tensor) -> torch.Tensor:
        """features (B, F, 1, T) -> the first conv's output (B, C, F/2, T/2), padding zeroed."""
        batch, num_mels, _, num_frames = features.shape
        x = features.reshape(batch, 1, num_mels, num_frames)
        # Zero conv1's output over padding, as training does, so conv2's window at the end of
        # the valid frames reads zeros there rather than relu(bias).
        return torch.relu(self.conv1(x)) * half_rate_mask

    def encoder_frames(self, half_rate: torch.Tensor) -> torch.Tensor:
        """The first conv's output (B, C, F/2, T') -> frames (B, d_model, 1, S)."""
        x = torch.relu(self.conv2(half_rate))  # (B, C, F/4, S)
        return self.out(x.reshape(x.shape[0], -1, 1, x.shape[-1]))  # (B, C * F/4, 1, S)
