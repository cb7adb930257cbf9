"""Multi-head self-attention with rotary positions, written for fast training.

Uses `scaled_dot_product_attention` (fused kernels on GPU, efficient on CPU). The Neural
Engine rewrite in `edge_conformer.ane` re-expresses the same weights per head with einsum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_conformer.model.rotary import apply_rotary, rotary_tables


class RotarySelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model={d_model} must split into {num_heads} heads of even size")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = x.shape
        return x.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); key_padding: (B, T) bool, True where the frame is padding."""
        batch, frames, channels = x.shape
        cos, sin = rotary_tables(frames, self.head_dim, device=x.device)
        q = apply_rotary(self._split_heads(self.q_proj(x)), cos.to(x.dtype), sin.to(x.dtype))
        k = apply_rotary(self._split_heads(self.k_proj(x)), cos.to(x.dtype), sin.to(x.dtype))
        v = self._split_heads(self.v_proj(x))
        mask = ~key_padding[:, None, None, :]  # True = attend
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(context.transpose(1, 2).reshape(batch, frames, channels))
