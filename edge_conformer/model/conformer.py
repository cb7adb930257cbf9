"""Conformer-CTC: subsampling front, Conformer blocks, linear CTC head."""

from __future__ import annotations

import torch
from torch import nn

from edge_conformer.model.attention import RotarySelfAttention
from edge_conformer.model.modules import ConvolutionModule, FeedForward
from edge_conformer.model.norms import make_norm
from edge_conformer.model.subsampling import ConvSubsampling


class ConformerBlock(nn.Module):
    """Macaron FFN/2 -> MHSA -> Conv -> FFN/2 -> norm, each branch pre-normalised and residual."""

    def __init__(
        self, d_model: int, num_heads: int, ffn_dim: int, kernel_size: int, norm: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.norm_ff1 = make_norm(norm, d_model)
        self.ff1 = FeedForward(d_model, ffn_dim, dropout)
        self.norm_attn = make_norm(norm, d_model)
        self.attn = RotarySelfAttention(d_model, num_heads, dropout)
        self.norm_conv = make_norm(norm, d_model)
        self.conv = ConvolutionModule(d_model, kernel_size)
        self.norm_ff2 = make_norm(norm, d_model)
        self.ff2 = FeedForward(d_model, ffn_dim, dropout)
        self.norm_out = make_norm(norm, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.dropout(self.ff1(self.norm_ff1(x)))
        x = x + self.dropout(self.attn(self.norm_attn(x), padding))
        x = x + self.dropout(self.conv(self.norm_conv(x), padding))
        x = x + 0.5 * self.dropout(self.ff2(self.norm_ff2(x)))
        return self.norm_out(x)


class ConformerCTC(nn.Module):
    """Log-mel features (B, T, F) -> CTC logits (B, T/4, vocab_size + 1); blank is index 0."""

    def __init__(
        self,
        vocab_size: int,
        feat_dim: int = 80,
        d_model: int = 176,
        num_heads: int = 4,
        num_layers: int = 16,
        ffn_mult: int = 4,
        conv_kernel_size: int = 31,
        subsampling: str = "depthwise",
        subsampling_channels: int | None = None,
        norm: str = "l2",
        dropout: float = 0.1,
        name: str = "custom",
    ) -> None:
        super().__init__()
        self.name = name  # the size preset (xs/s/m/l), kept for reports
        self.subsampling = ConvSubsampling(
            subsampling, feat_dim, d_model, subsampling_channels or d_model
        )
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, num_heads, ffn_mult * d_model, conv_kernel_size, norm, dropout)
            for _ in range(num_layers)
        )
        self.head = nn.Linear(d_model, vocab_size + 1)

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.subsampling(feats, lengths)
        frames = torch.arange(x.shape[1], device=x.device)
        padding = frames[None, :] >= out_lengths[:, None]
        for block in self.blocks:
            x = block(x, padding)
        return self.head(x), out_lengths


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
