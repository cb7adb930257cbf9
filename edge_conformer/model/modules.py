"""The Conformer block's two non-attention branches: feed-forward and convolution."""

from __future__ import annotations

import torch
from torch import nn


class FeedForward(nn.Module):
    """Linear -> Swish -> dropout -> Linear (the macaron half-step is applied by the block)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(nn.functional.silu(self.linear1(x))))


CONV_CONTEXTS = ("symmetric", "chunk", "causal")


def depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0
) -> torch.Tensor:
    """Depthwise Conv1d of (B, C, T) with (C, 1, k) weights, zero `padding` on both sides.

    Run as a (1, k) Conv2d on (B, C, 1, T): when x is a (B, C, T) view of (B, T, C) memory
    (what `ConvolutionModule._depthwise_inputs` returns), that is the channels-last layout,
    where oneDNN's depthwise kernel is several times faster than Conv1d's channels-first one
    and gives the same sums. The result keeps that layout.
    """
    out = nn.functional.conv2d(
        x.unsqueeze(2), weight.unsqueeze(2), bias, padding=(0, padding), groups=weight.shape[0]
    )
    return out.squeeze(2)


class FrameBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d (same parameters and statistics) that also takes (B, C, 1, T) input, so a
    channels-last depthwise output is normalised in place of being copied channels-first."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {input.dim()}D input)")


class ConvolutionModule(nn.Module):
    """Pointwise (2C) -> GLU -> depthwise (kernel k) -> BatchNorm -> Swish -> pointwise.

    `context` (model.conv_context) sets what the depthwise conv's taps see:
    - symmetric: k//2 frames on either side (the offline model);
    - chunk: k//2 real past frames (across chunk boundaries) and the future only up to the
      end of the frame's own chunk (zeros beyond), so a chunk needs no look-ahead; with one
      chunk spanning the utterance it is `symmetric`;
    - causal: the k-1 past frames and no future.
    The weights have the same shape in all three, so `depthwise` stays a symmetric Conv1d
    (what the Neural Engine rewrite reads); chunk and causal call it with their own padding.
    """

    def __init__(self, d_model: int, kernel_size: int, context: str = "symmetric") -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"model.conv_kernel_size must be odd, got {kernel_size}")
        if context not in CONV_CONTEXTS:
            raise ValueError(f"model.conv_context must be one of {CONV_CONTEXTS}, got {context!r}")
        self.context = context
        self.pointwise1 = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.depthwise = nn.Conv1d(
            d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model
        )
        self.batch_norm = FrameBatchNorm(d_model)
        self.pointwise2 = nn.Conv1d(d_model, d_model, kernel_size=1)

    @property
    def cache_frames(self) -> int:
        """Past depthwise inputs a chunk loop keeps: every past tap (k-1 causal, else k//2)."""
        kernel = self.depthwise.kernel_size[0]
        return kernel - 1 if self.context == "causal" else kernel // 2

    def forward(
        self, x: torch.Tensor, padding: torch.Tensor, chunk_frames: int | None = None
    ) -> torch.Tensor:
        """x: (B, T, C); padding (B, T) True at padded frames; chunk_frames: None = one chunk."""
        x = self._depthwise_inputs(x, padding)
        if self.context == "causal":
            x = self._depthwise_unpadded(nn.functional.pad(x, (self.cache_frames, 0)))
        elif self.context == "chunk" and chunk_frames is not None and chunk_frames < x.shape[2]:
            x = self._chunked_depthwise(x, chunk_frames)
        else:
            conv = self.depthwise
            x = depthwise_conv(x, conv.weight, conv.bias, padding=conv.padding[0])
        return self._outputs(x)

    def forward_chunk(
        self, x: torch.Tensor, padding: torch.Tensor, cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk (B, C, d) with `cache` (B, d, cache_frames), the depthwise conv's inputs
        before it: returns the chunk's outputs and the next cache. Chunk/causal only."""
        window = torch.cat([cache, self._depthwise_inputs(x, padding)], dim=2)
        future = self.depthwise.kernel_size[0] - 1 - self.cache_frames  # zeros past the chunk
        x = self._depthwise_unpadded(nn.functional.pad(window, (0, future)))
        return self._outputs(x), window[:, :, window.shape[2] - self.cache_frames :]

    def _depthwise_inputs(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, C, T) after pointwise and GLU, padded frames zeroed.

        Padded frames are zeroed right before the depthwise conv (after GLU, which would turn
        zeros into glu(bias)), so its window at an utterance's end sees what it would see
        with no padding at all. The result is a (B, C, T) view of (B, T, C) memory: the
        pointwise conv is a Linear over the channels (no transposed copy), and the depthwise
        conv runs channels-last on it (see `depthwise_conv`).
        """
        pointwise = self.pointwise1
        x = nn.functional.glu(nn.functional.linear(x, pointwise.weight[:, :, 0], pointwise.bias))
        return x.masked_fill_(padding[:, :, None], 0.0).transpose(1, 2)  # GLU keeps no output

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise conv output (B, C, T) -> BatchNorm -> Swish -> pointwise -> (B, T, C).

        BatchNorm and Swish run on the 4-D (B, C, 1, T) view, which keeps the channels-last
        layout (a 3-D BatchNorm would copy it to channels-first), and the pointwise conv is a
        Linear over the channels of the (B, T, C) view."""
        x = nn.functional.silu(self.batch_norm(x.unsqueeze(2))).squeeze(2).transpose(1, 2)
        pointwise = self.pointwise2
        return nn.functional.linear(x, pointwise.weight[:, :, 0], pointwise.bias)

    def _depthwise_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise conv with no padding: the caller padded (or cached) the context."""
        return depthwise_conv(x, self.depthwise.weight, self.depthwise.bias)

    def _chunked_depthwise(self, x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """The `chunk` context over a whole sequence (B, C, T) in two convs: the past taps (and
        the centre) over the sequence, which crosses chunk boundaries freely; the future taps
        over each chunk on its own, zero-padded on the right (chunks as a second spatial axis
        of a (1, taps) conv). A frame sees at most chunk-1 frames ahead in its chunk, so only
        that many future taps can be non-zero: small chunks cost no more than large ones."""
        conv, half = self.depthwise, self.depthwise.kernel_size[0] // 2
        batch, channels, frames = x.shape
        past = depthwise_conv(
            nn.functional.pad(x, (half, 0)), conv.weight[..., : half + 1], conv.bias
        )
        taps = min(half, chunk_frames - 1)
        if taps == 0:
            return past
        num_chunks = -(-frames // chunk_frames)
        chunks = nn.functional.pad(x, (0, num_chunks * chunk_frames - frames))
        # Frame r of a chunk reads frames r+1..r+taps of it: drop each chunk's first frame,
        # pad `taps` zeros on the right, and a kernel of the first `taps` future taps does it.
        chunks = chunks.view(batch, channels, num_chunks, chunk_frames)[..., 1:]
        future = nn.functional.conv2d(
            nn.functional.pad(chunks, (0, taps)),
            conv.weight[..., half + 1 : half + 1 + taps].unsqueeze(2), groups=conv.groups,
        )
        return past + future.reshape(batch, channels, -1)[..., :frames]
