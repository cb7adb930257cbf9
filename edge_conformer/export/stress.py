"""Checkpoints with the same FP32 function but a K times larger residual stream.

Every Conformer block normalises its input before each branch and its output at the end, and
norms are scale invariant (up to their epsilon). So multiplying the block input and every
branch's last projection by K multiplies the whole residual stream inside the block by K and
changes nothing else; the block's final norm then scales its output back up by K (its weight
and bias), which is the next block's input. After the last block the CTC head divides by K.
The result recognises exactly as before while its activations test an FP16 export at K times
the magnitudes training produced: how a user proves an export survives large activations.
"""

from __future__ import annotations

import re

import torch

# The last projection of every residual branch of a block (edge_conformer.model.conformer).
BRANCH_OUTPUTS = ("ff1.linear2", "attn.out_proj", "conv.pointwise2", "ff2.linear2")
BLOCK_INDEX = re.compile(r"blocks\.(\d+)\.")


def _num_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {
        int(match.group(1))
        for key in state_dict
        if key.startswith(prefix) and (match := BLOCK_INDEX.match(key[len(prefix):]))
    }
    if not indices:
        raise ValueError(f"no Conformer blocks under {prefix!r} in the state dict")
    return max(indices) + 1


def residual_stream_scales(
    state_dict: dict[str, torch.Tensor], scale: float, prefix: str = "model."
) -> dict[str, float]:
    """Parameter name -> the factor it is multiplied by to make the residual stream `scale`x."""
    layers = [f"{prefix}subsampling.out"]  # its output is the first block's input
    for block in range(_num_blocks(state_dict, prefix)):
        # norm_out's weight and bias: the block output, i.e. the next block's input (or, after
        # the last block, the head's input, undone by the head's weight below).
        names = (*BRANCH_OUTPUTS, "norm_out")
        layers += [f"{prefix}blocks.{block}.{name}" for name in names]
    factors = {f"{layer}.{param}": scale for layer in layers for param in ("weight", "bias")}
    factors[f"{prefix}head.weight"] = 1.0 / scale
    missing = sorted(set(factors) - set(state_dict))
    if missing:
        raise KeyError(f"state dict lacks {missing}: not a ConformerCTC checkpoint")
    return factors


def scale_residual_stream(
    state_dict: dict[str, torch.Tensor], scale: float, prefix: str = "model."
) -> dict[str, torch.Tensor]:
    """A copy of `state_dict` whose model computes the same logits with a `scale`x residual
    stream inside every block (see the module docstring)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    factors = residual_stream_scales(state_dict, scale, prefix)
    return {
        key: value * factors[key] if key in factors else value
        for key, value in state_dict.items()
    }
