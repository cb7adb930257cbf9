"""The executor's arithmetic: the numerics' format model (docs/numerics.md, section 1) on arrays.

Values always live in float32 arrays; "FP16" means rounded to the nearest FP16 value (with
overflow to +-inf), which is how the Neural Engine stores every tensor. Each executor mode is
the numerics' `EmulatedArithmetic(storage, accumulate)` (see `MODE_ARITHMETIC`): every op's
output is rounded to the storage format, and the sums inside reductions, normalisations and
softmax accumulate in order in the accumulator format, bit for bit as the `accumulate_sum` and
`accumulate_mean` the proofs' property tests use. Under fp16-strict the accumulator is FP16: the
pessimistic accelerator on which a LayerNorm's sum of squares overflows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from edge_conformer.numerics.formats import (
    FP16,
    FP32,
    FloatFormat,
    accumulate_mean,
    accumulate_sum,
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
    # round_to_format(x, FP16) as .half().float(): the same casts, a third less fixed cost.
    return _as_torch(array).half().float().numpy()


def normalize_axes(axes: Iterable[int] | None, rank: int) -> tuple[int, ...]:
    """Non-negative axes, in the order given; `None` means every axis."""
    if axes is None:
        return tuple(range(rank))
    return tuple(int(axis) % rank for axis in axes)


def count_nonfinite(values: np.ndarray) -> int:
    """Number of inf and NaN entries of a float array (0 for other dtypes)."""
    # A finite sum proves every entry finite in one vectorised pass; only a non-finite sum
    # (rare, or an FP32-mode overflow of the sum itself) pays for the exact count.
    # (np.add.reduce and math.isfinite: a third cheaper than values.sum() and np.isfinite.)
    if values.dtype.kind != "f" or math.isfinite(np.add.reduce(values, axis=None)):
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
        self._accumulate_dtype = np.float16 if strict_fp16 else np.float32
        self._hidden_nonfinite = 0
        # The rows of a batched call (PackageExecutor: N inputs stacked on a leading axis
        # the program declares as 1); 1 otherwise. Kernels that would mix rows read it.
        self.rows = 1

    def sum(self, terms: np.ndarray, axes: Iterable[int] | None, keepdims: bool) -> np.ndarray:
        """The in-order sum over `axes` in the accumulator format."""
        return self._accumulate(terms, axes, keepdims, mean=False)

    def mean(self, terms: np.ndarray, axes: Iterable[int] | None, keepdims: bool) -> np.ndarray:
        """The accumulated sum divided by the count, rounded once to the accumulator format."""
        return self._accumulate(terms, axes, keepdims, mean=True)

    def _accumulate(
        self, terms: np.ndarray, axes: Iterable[int] | None, keepdims: bool, mean: bool
    ) -> np.ndarray:
        axes = normalize_axes(axes, terms.ndim)
        # MIL stores keep_dims as a NumPy bool, which NumPy's reductions reject as keepdims.
        keepdims = bool(keepdims)
        if terms.dtype.kind != "f":
            return (np.mean if mean else np.sum)(terms, axis=axes, keepdims=keepdims)
        # `accumulate_sum` and `accumulate_mean` step for step, without their torch round
        # trips, whose fixed cost made up most of the many small sums' time (a streaming chunk
        # has hundreds): the same rows (the reduced axes moved to the front, row-major), the
        # same in-order additions, the same true division (tests/test_executor.py checks that
        # the two agree bit for bit, overflow included).
        kept_axes = tuple(axis for axis in range(terms.ndim) if axis not in axes)
        kept_shape = tuple(terms.shape[axis] for axis in kept_axes)
        # torch.movedim's (and np.moveaxis's) order, through a plain transpose: cheaper.
        rows = terms.transpose(axes + kept_axes).reshape((-1, *kept_shape))
        accumulator = self._accumulate_dtype
        # Overflow (and inf - inf = nan) is part of the model, not an error to warn about.
        with np.errstate(over="ignore", invalid="ignore"):
            # NumPy's accumulate is a running sum, strictly in order (unlike its pairwise
            # reductions), each step one correctly rounded addition in the accumulator format.
            partial_sums = np.add.accumulate(rows.astype(accumulator, copy=False), axis=0)
            # [-1, ...] keeps a 0-d array (not a NumPy scalar) when every axis is reduced.
            total = partial_sums[-1, ...].astype(np.float32)
            if mean:
                total /= np.float32(len(rows))  # in place: a 0-d array stays an array
                total = total.astype(accumulator, copy=False).astype(np.float32, copy=False)
        if accumulator is np.float16 and np.isnan(total).any():
            # NumPy's FP16 conversions give a NaN other payload bits than torch's (which vary
            # with the tensor's size, too): a sum holding a NaN, rare, is redone through
            # the torch functions, to keep even those bits.
            emulated = accumulate_mean if mean else accumulate_sum
            return emulated(_as_torch(terms), axes, self.accumulate_fmt, keepdim=keepdims).numpy()
        if not keepdims:
            return total
        return total.reshape([1 if axis in axes else size for axis, size in enumerate(terms.shape)])

    def watch(self, statistic: np.ndarray) -> np.ndarray:
        """Count the non-finite entries of a fused op's hidden statistic; return it unchanged."""
        self._hidden_nonfinite += count_nonfinite(statistic)
        return statistic

    def take_hidden_nonfinite(self) -> int:
        """Non-finite hidden statistics seen since the last call."""
        count, self._hidden_nonfinite = self._hidden_nonfinite, 0
        return count
