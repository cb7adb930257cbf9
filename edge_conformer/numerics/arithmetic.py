"""One op sequence, two arithmetics.

The stable kernels are written once against a small arithmetic interface. With
:class:`GraphArithmetic` every call is the plain torch op, so the kernel traces into exactly the
ops the exported Core ML program runs. With :class:`EmulatedArithmetic` every op's result is
rounded to a format and every reduction accumulates in order in a (possibly wider) format, which
is how the tests check the guarantees of ``docs/numerics.md`` on a machine without FP16 hardware.
"""

from __future__ import annotations

import torch

from edge_conformer.numerics.formats import (
    FloatFormat,
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

    def floor(self, t: torch.Tensor, value: float) -> torch.Tensor:
        """max(t, value): ``maximum`` against a constant, which converts to one MIL op."""
        return torch.maximum(t, torch.full_like(t, self.const(value)))


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
        # A reduce_mean is modelled as the sum, stored, times the rounded reciprocal of d.
        return self.round(self.sum(t, dim) * self.const(1.0 / t.shape[dim]))
