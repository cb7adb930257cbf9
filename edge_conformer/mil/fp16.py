"""The executor's arithmetic: the numerics' format model (docs/numerics.md, section 1) on arrays.

Values always live in float32 arrays; "FP16" means rounded to the nearest FP16 value (with
overflow to +-inf), which is how the Neural Engine stores every tensor. Each executor mode is
the numerics' `EmulatedArithmetic(storage, accumulate)` (see `MODE_ARITHMETIC`): every op's
output is rounded to the storage format, and the sums inside reductions, normalisations and
softmax accumulate in order in the accumulator format, through the same `accumulate_sum` and
`accumulate_mean` the proofs' property tests use. Under fp16-strict the accumulator is FP16:
the pessimistic accelerator on which a LayerNorm's sum of squares overflows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from edge_conformer.numerics.formats import (
    FP16,
    FP32,
    FloatFormat,
    accumulate_mean,
    accumulate_sum,
    round_to_format,
)


@dataclass(frozen=True)
class ModeArithmetic:
    """An executor mode as the numerics' `EmulatedArithmetic(storage, accumulate)`: op outputs
    stored in `storage`, sums accumulated in order in `accumulate`. Inside one op (a fused
    layer_norm's centring, softmax's exponentials) the executor computes in float32."""

    storage: FloatFormat
    accumulate: FloatFormat


MODE_ARITHMETIC = {
    "fp32": ModeArithmetic(storage=FP32, accumulate=FP32),
    "fp16": ModeArithmetic(storage=FP16, accumulate=FP32),
    "fp16-strict": ModeArithmetic(storage=FP16, accumulate=FP16),
}


def _as_torch(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


# Below this many elements NumPy's casts beat torch's, whose fixed cost per call dominates.
SMALL_ARRAY = 1024


def round_to_fp16(values: np.ndarray) -> np.ndarray:
    """The nearest FP16 values (beyond +-65504: +-inf), as a float32 array."""
    # These conversions run on every op output. torch converts large arrays with the CPU's
    # F16C instructions, ~10x faster than NumPy's casts; the many small outputs of a streaming
    # chunk (per-head slices, per-frame statistics) are faster through NumPy. Both round to
    # nearest even and overflow to inf (tests/test_executor.py checks they agree).
    array = np.asarray(values, dtype=np.float32)
    if array.size <= SMALL_ARRAY:
        with np.errstate(over="ignore"):  # overflow to inf is the FP16 semantics, not a fault
            return array.astype(np.float16).astype(np.float32)
    return round_to_format(_as_torch(array), FP16).numpy()


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


class Numerics:
    """How kernels accumulate the sums and means of reductions, normalisations and softmax.

    `strict_fp16` picks the accumulator: FP16 (fp16-strict) or FP32 (the other modes), as in
    `MODE_ARITHMETIC`. Sums and means come back in the accumulator's format; the executor then
    rounds an op's output to the mode's storage format, so a reduce_sum or reduce_mean op gives
    exactly `EmulatedArithmetic(storage, accumulate).sum` or `.mean`.

    Kernels of fused ops (layer_norm, softmax, ...) pass their hidden statistics through
    `watch`: an overflow there is the failure fp16-strict exists to expose, yet it can vanish
    from the op's output (x / sqrt(inf) is 0), so it is counted here and collected by the
    executor with `take_hidden_nonfinite` after every op.
    """

    def __init__(self, strict_fp16: bool) -> None:
        self.accumulate_fmt = MODE_ARITHMETIC["fp16-strict" if strict_fp16 else "fp16"].accumulate
        self._hidden_nonfinite = 0

    def sum(self, terms: np.ndarray, axes: Iterable[int] | None, keepdims: bool) -> np.ndarray:
        """The in-order sum over `axes` in the accumulator format."""
        return self._accumulate(accumulate_sum, np.sum, terms, axes, keepdims)

    def mean(self, terms: np.ndarray, axes: Iterable[int] | None, keepdims: bool) -> np.ndarray:
        """The accumulated sum divided by the count, rounded once to the accumulator format."""
        return self._accumulate(accumulate_mean, np.mean, terms, axes, keepdims)

    def _accumulate(
        self,
        emulated: Callable[..., torch.Tensor],
        integer: Callable[..., np.ndarray],
        terms: np.ndarray,
        axes: Iterable[int] | None,
        keepdims: bool,
    ) -> np.ndarray:
        axes = normalize_axes(axes, terms.ndim)
        # MIL stores keep_dims as a NumPy bool, which NumPy's reductions reject as keepdims.
        keepdims = bool(keepdims)
        if terms.dtype.kind != "f":
            return integer(terms, axis=axes, keepdims=keepdims)
        return emulated(_as_torch(terms), axes, self.accumulate_fmt, keepdim=keepdims).numpy()

    def watch(self, statistic: np.ndarray) -> np.ndarray:
        """Count the non-finite entries of a fused op's hidden statistic; return it unchanged."""
        self._hidden_nonfinite += count_nonfinite(statistic)
        return statistic

    def take_hidden_nonfinite(self) -> int:
        """Non-finite hidden statistics seen since the last call."""
        count, self._hidden_nonfinite = self._hidden_nonfinite, 0
        return count
