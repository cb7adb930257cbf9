"""One op sequence, two arithmetics.

The stable kernels are written once against a small arithmetic interface. With
:class:`GraphArithmetic` every call is the plain torch op, so the kernel traces into exactly the
ops the exported Core ML program runs. With :class:`EmulatedArithmetic` every op's result is
rounded to a format and every reduction accumulates in order in a (possibly wider) format, which
is how the tests check the guarantees of ``docs/numerics.md`` on a machine without FP16 hardware.

The package executor runs the same model: its mode "fp16" is ``EmulatedArithmetic(FP16, FP32)``
and "fp16-strict" is ``EmulatedArithmetic(FP16, FP16)`` (``edge_conformer/mil/fp16.py``), with
sums and means from the same two functions, ``accumulate_sum`` and ``accumulate_mean``.
"""

from __future__ import annotations

import torch

from edge_conformer.numerics.formats import (
    FloatFormat,
    accumulate_mean,
    accumulate_sum,
    round_scalar,
    round_to_format,
)


class GraphArithmetic:
    """Plain torch ops: rounding is whatever the tensor dtype does."""

    def round(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def const(self, value: float) -> float:
        return value

    def sum(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.sum(dim=dim, keepdim=True)

    def mean(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.mean(dim=dim, keepdim=True)

    def constant_like(self, t: torch.Tensor, value: float) -> torch.Tensor:
        """``value`` in the shape of ``t``: a ``fill_like`` in the converted program.

        Divide a constant by a tensor through it: torch.export turns ``value / t`` into
        ``reciprocal(t) * value``, and coremltools converts ``reciprocal`` to an ``inverse``
        op that adds its default epsilon 1e-4 to ``t`` and rounds once more.
        """
        return torch.full_like(t, self.const(value))

    def floor(self, t: torch.Tensor, value: float) -> torch.Tensor:
        """max(t, value): ``maximum`` against a constant, which converts to one MIL op."""
        return torch.maximum(t, self.constant_like(t, value))


class EmulatedArithmetic(GraphArithmetic):
    """Every op rounded to ``fmt``; sums accumulated in order in ``accumulate_fmt``.

    ``overflowed`` becomes true as soon as any rounded intermediate is inf or nan.
    """

    def __init__(self, fmt: FloatFormat, accumulate_fmt: FloatFormat | None = None) -> None:
        self.fmt = fmt
        self.accumulate_fmt = accumulate_fmt or fmt
        self.overflowed = False

    def round(self, t: torch.Tensor) -> torch.Tensor:
        rounded = round_to_format(t, self.fmt)
        self.overflowed |= not bool(torch.isfinite(rounded).all())
        return rounded

    def const(self, value: float) -> float:
        return round_scalar(value, self.fmt)

    def sum(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return self.round(accumulate_sum(t, dim, self.accumulate_fmt, keepdim=True))

    def mean(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        # One reduce_mean op: the accumulated sum divided by d, stored once (docs section 1).
        return self.round(accumulate_mean(t, dim, self.accumulate_fmt, keepdim=True))
