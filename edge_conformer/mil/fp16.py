"""Arithmetic models for the package executor: FP16 rounding and FP16-accumulated reductions.

Values always live in float32 arrays; "FP16" means rounded to the nearest FP16 value (with
overflow to +-inf), which is how the Neural Engine stores every tensor. Under strict numerics
the sums inside reductions, normalisations and softmax are also accumulated in FP16, one term
at a time: the pessimistic accelerator on which a LayerNorm's sum of squares overflows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def to_fp16(values: np.ndarray) -> np.ndarray:
    """The nearest FP16 values (beyond +-65504: +-inf), as a float16 array."""
    # torch converts with the CPU's F16C instructions, ~10x faster than NumPy's casts, and
    # these conversions run on every op output.
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).half().numpy()


def round_to_fp16(values: np.ndarray) -> np.ndarray:
    """The nearest FP16 values (beyond +-65504: +-inf), as a float32 array."""
    return torch.from_numpy(to_fp16(values)).float().numpy()


def normalize_axes(axes: Iterable[int] | None, rank: int) -> tuple[int, ...]:
    """Non-negative axes, in the order given; `None` means every axis."""
    if axes is None:
        return tuple(range(rank))
    return tuple(int(axis) % rank for axis in axes)


def count_nonfinite(values: np.ndarray) -> int:
    """Number of inf and NaN entries of a float array (0 for other dtypes)."""
    # A finite sum proves every entry finite in one vectorised pass; only a non-finite sum
    # (rare, or an FP32-mode overflow of the sum itself) pays for the exact count.
    if values.dtype.kind != "f" or np.isfinite(values.sum()):
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def sequential_fp16_sum(terms: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Sum over `axes` (non-negative, kept as size 1) with every partial sum rounded to FP16.

    Terms are added one at a time along the reduced axes, vectorised over all other axes, so
    the loop runs once per reduced element (a few thousand at most).
    """
    kept = tuple(axis for axis in range(terms.ndim) if axis not in axes)
    rows = np.transpose(terms, axes + kept).reshape((-1,) + tuple(terms.shape[a] for a in kept))
    total = np.zeros(rows.shape[1:], dtype=np.float16)
    for row in to_fp16(rows):
        total += row  # NumPy's float16 addition rounds each FP16 + FP16 sum correctly
    return np.expand_dims(total.astype(np.float32), axes)


class Numerics:
    """How kernels accumulate the sums of reductions, normalisations and softmax.

    Kernels of fused ops (layer_norm, softmax, ...) pass their hidden statistics through
    `watch`: an overflow there is the failure fp16-strict exists to expose, yet it can vanish
    from the op's output (x / sqrt(inf) is 0), so it is counted here and collected by the
    executor with `take_hidden_nonfinite` after every op.
    """

    def __init__(self, strict_fp16: bool) -> None:
        self.strict_fp16 = strict_fp16
        self._hidden_nonfinite = 0

    def sum(self, terms: np.ndarray, axes: Iterable[int] | None, keepdims: bool) -> np.ndarray:
        axes = normalize_axes(axes, terms.ndim)
        if self.strict_fp16 and terms.dtype.kind == "f":
            total = sequential_fp16_sum(terms, axes)
            return total if keepdims else np.squeeze(total, axes)
        # MIL stores keep_dims as a NumPy bool, which NumPy's reductions reject as keepdims.
        return np.sum(terms, axis=axes, keepdims=bool(keepdims))

    def mean(self, terms: np.ndarray, axes: Iterable[int] | None, keepdims: bool) -> np.ndarray:
        """Sum, then divide: under strict numerics the sum can overflow before the division."""
        axes = normalize_axes(axes, terms.ndim)
        count = int(np.prod([terms.shape[axis] for axis in axes]))
        mean = self.sum(terms, axes, keepdims) / np.float32(count)
        return round_to_fp16(mean) if self.strict_fp16 else mean

    def watch(self, statistic: np.ndarray) -> np.ndarray:
        """Count the non-finite entries of a fused op's hidden statistic; return it unchanged."""
        self._hidden_nonfinite += count_nonfinite(statistic)
        return statistic

    def take_hidden_nonfinite(self) -> int:
        """Non-finite hidden statistics seen since the last call."""
        count, self._hidden_nonfinite = self._hidden_nonfinite, 0
        return count
