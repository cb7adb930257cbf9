"""Multi-head self-attention with rotary positions, written for fast training.

Uses `scaled_dot_product_attention` (fused kernels on GPU, efficient on CPU). The Neural
Engine rewrite in `edge_conformer.export` re-expresses the same weights per head with einsum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_conformer.model.rotary import apply_rotary, rotary_tables, signed_sin
from edge_conformer.model.streaming import with_own_key


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

    def _projections(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> queries, keys and values (B, T, 3, heads, head_dim) in one matmul.

        The three projections keep their own parameters (checkpoints load unchanged); their
        weights are concatenated per call, a copy far smaller than the activations, so that
        one larger matmul replaces three small ones and rotary positions rotate queries and
        keys together.
        """
        batch, frames, _ = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([proj.weight for proj in projections])
        bias = torch.cat([proj.bias for proj in projections])
        qkv = F.linear(x, weight, bias)
        return qkv.view(batch, frames, 3, self.num_heads, self.head_dim)

    def _tables(self, frames: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables (positions 0..frames-1, head_dim), cos and `signed_sin`, in the dtype
        of the attention's input x (under autocast the projections may be half precision;
        the rotation then runs in the input's precision, as it always has)."""
        cos, sin = rotary_tables(frames, self.head_dim, device=x.device)
        return cos.to(x.dtype), signed_sin(sin).to(x.dtype)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-head attention of (B, T, heads, head_dim) queries, keys and values (mask True =
        attend), heads merged and projected: (B, Tq, C)."""
        batch, queries = q.shape[:2]
        context = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(context.transpose(1, 2).reshape(batch, queries, -1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); mask: bool, True = attend, broadcastable to (B, heads, T, T)
        (the key-padding (B, 1, 1, T) or a chunk mask (B, 1, T, T): streaming.py)."""
        qkv = self._projections(x)
        cos, sin = self._tables(x.shape[1], x)
        # Queries and keys share their positions: one rotation of both, tables (T, 1, 1, D).
        q, k = apply_rotary(qkv[:, :, :2], cos[:, None, None], sin[:, None, None]).unbind(2)
        return self._attend(q, k, qkv[:, :, 2], mask)

    def forward_chunk(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk x (B, C, d) attending its cached left context and itself.

        keys, values: (B, L, d), the last L frames' projections, keys NOT rotated; key_valid
        (B, L + C): which window frames exist (empty cache slots and the padding at a stream's
        end do not). The window [cache; chunk] is rotated with constant window-local positions
        0..L+C-1, queries at L..L+C-1: rotary scores depend only on offsets, so this equals the
        full forward's absolute positions, and no angle grows with the stream's length.
        Returns the chunk's outputs and the window's un-rotated keys and values (B, L + C, d).
        """
        q, k, v = self._projections(x).flatten(3).unbind(2)
        window_keys = torch.cat([keys, k], dim=1)
        window_values = torch.cat([values, v], dim=1)
        cached, window = keys.shape[1], window_keys.shape[1]
        cos, sin = (table[:, None] for table in self._tables(window, x))  # (L + C, 1, D)
        q = apply_rotary(self._split_heads(q), cos[cached:], sin[cached:])
        k = apply_rotary(self._split_heads(window_keys), cos, sin)
        allowed = key_valid[:, None, :].expand(-1, x.shape[1], -1)
        mask = with_own_key(allowed, offset=cached)[:, None]
        out = self._attend(q, k, self._split_heads(window_values), mask)
        return out, window_keys, window_values

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, heads, head_dim)."""
        return x.unflatten(2, (self.num_heads, self.head_dim))
