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
        self.batch_norm = nn.BatchNorm1d(d_model)
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
            x = self.depthwise(x)
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
        with no padding at all.
        """
        x = nn.functional.glu(self.pointwise1(x.transpose(1, 2)), dim=1)
        return x.masked_fill(padding[:, None, :], 0.0)

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise conv output (B, C, T) -> BatchNorm -> Swish -> pointwise -> (B, T, C)."""
        return self.pointwise2(nn.functional.silu(self.batch_norm(x))).transpose(1, 2)

    def _depthwise_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise conv with no padding: the caller padded (or cached) the context."""
        conv = self.depthwise
        return nn.functional.conv1d(x, conv.weight, conv.bias, groups=conv.groups)

    def _chunked_depthwise(self, x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """The `chunk` context over a whole sequence (B, C, T) in two convs: the past taps (and
        the centre) over the sequence, which crosses chunk boundaries freely; the future taps
        over each chunk on its own, zero-padded on the right (chunks as a second spatial axis
        of a (1, taps) conv). A frame sees at most chunk-1 frames ahead in its chunk, so only
        that many future taps can be non-zero: small chunks cost no more than large ones."""
        conv, half = self.depthwise, self.depthwise.kernel_size[0] // 2
        batch, channels, frames = x.shape
        past = nn.functional.conv1d(
            nn.functional.pad(x, (half, 0)), conv.weight[..., : half + 1], conv.bias,
            groups=conv.groups,
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
