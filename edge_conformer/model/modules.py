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


class ConvolutionModule(nn.Module):
    """Pointwise (2C) -> GLU -> depthwise (kernel k) -> BatchNorm -> Swish -> pointwise."""

    def __init__(self, d_model: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"model.conv_kernel_size must be odd, got {kernel_size}")
        self.pointwise1 = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.depthwise = nn.Conv1d(
            d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model
        )
        self.batch_norm = nn.BatchNorm1d(d_model)
        self.pointwise2 = nn.Conv1d(d_model, d_model, kernel_size=1)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); padding (B, T) True at padded frames.

        Padded frames are zeroed right before the depthwise conv (after GLU, which would turn
        zeros into glu(bias)), so its window at an utterance's end sees what it would see
        with no padding at all.
        """
        x = nn.functional.glu(self.pointwise1(x.transpose(1, 2)), dim=1)
        x = x.masked_fill(padding[:, None, :], 0.0)
        x = nn.functional.silu(self.batch_norm(self.depthwise(x)))
        return self.pointwise2(x).transpose(1, 2)
