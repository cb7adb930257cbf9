"""Rotary position embedding (RoPE, Su et al. 2021) applied to queries and keys.

Why RoPE: attention scores then depend only on relative offsets (what NeMo's Transformer-XL
relative encoding buys), but the encoding is an element-wise multiply by constant cos/sin
tables plus a half-swap of channels. In the channels-first (B, C, 1, S) Neural Engine graph
that is a split and concat along C and two multiplies by baked constants: no relative-shift
gather, no pad-and-reshape copies, no transposes. Absolute sinusoids would be as cheap but
make windowed long-audio inference position-dependent.
"""

from __future__ import annotations

import torch


def rotary_tables(
    num_frames: int, head_dim: int, base: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (num_frames, head_dim) for the half-rotation layout."""
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float32, device=device) / half)
    angles = torch.arange(num_frames, dtype=torch.float32, device=device)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """The sin table with its first half negated, for `apply_rotary`."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (..., head_dim) by their frame position: x * cos +
    rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1]. The tables (`signed_sin` for
    the sine) broadcast against x. Written as roll([x1, x2]) = [x2, x1] times the signed sine,
    the sign rides on the table: one copy of x instead of a negation and a concat, and the
    same products exactly, since -(a) * b == a * (-b) in floating point."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed
