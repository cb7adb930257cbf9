"""Per-frame normalisations: standard LayerNorm (L2) and mean-absolute-deviation (MAD) norm.

Both normalise over the last (channel) axis of a (B, T, C) tensor. The MAD norm divides the
centred vector by its mean absolute deviation instead of its standard deviation: it needs no
squares, so its statistic cannot overflow where an L2 statistic would (Xu et al., 2024).
"""

from __future__ import annotations

import torch
from torch import nn


class MADNorm(nn.Module):
    """y = (x - mean(x)) / (mean|x - mean(x)| + eps) * weight + bias, over the last axis."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        deviation = centred.abs().mean(dim=-1, keepdim=True)
        return centred / (deviation + self.eps) * self.weight + self.bias


NORMS = {"l2": nn.LayerNorm, "mad": MADNorm}


def make_norm(kind: str, num_channels: int) -> nn.Module:
    """Build the normalisation named by `model.norm` (``l2`` or ``mad``)."""
    if kind not in NORMS:
        raise ValueError(f"model.norm must be one of {sorted(NORMS)}, got {kind!r}")
    return NORMS[kind](num_channels)
