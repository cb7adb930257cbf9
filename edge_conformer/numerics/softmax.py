"""Conditionally re-scaled softmax for accelerators with a lookup-table exp (docs/numerics.md).

softmax(z) = softmax(z - c) for every c. The accelerator's exp is a table over a bounded
domain and FP16's overflows above ln(65504) ~ 11.09, so the usual fix subtracts c = max z
always. Here it is subtracted only when max z leaves [lower_threshold, threshold]: inside that
window nothing is subtracted (c = 0, the plain formula bit for bit), and in both cases every
exp argument stays in the table's domain, no exp or the denominator overflows, and the
denominator is at least 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edge_conformer.numerics.arithmetic import EmulatedArithmetic, GraphArithmetic
from edge_conformer.numerics.formats import FP16, FloatFormat, round_down_scalar


def _denominator_growth(num_terms: int, fmt: FloatFormat, accumulate_fmt: FloatFormat) -> float:
    """Bound on computed / exact denominator: each exp rounded, the sum accumulated and stored."""
    u = fmt.unit_roundoff
    return (1 + u) ** 2 * min((1 + accumulate_fmt.unit_roundoff) ** (num_terms - 1), 2.0)


def softmax_threshold(num_terms: int, fmt: FloatFormat) -> float:
    """T = ln(M / (S g)) rounded down to ``fmt``: S exponentials of arguments <= T cannot overflow.

    S = ``num_terms``, g the worst-case rounding growth of the denominator (accumulating in
    ``fmt``). Raises when T < 0: then even re-scaled terms (each <= 1) can overflow the sum.
    """
    growth = _denominator_growth(num_terms, fmt, fmt)
    threshold = math.log(fmt.max_finite) - math.log(num_terms) - math.log(growth)
    if threshold < 0:
        raise ValueError(
            f"{num_terms} terms can overflow a {fmt.name} sum even after re-scaling; "
            "accumulate in a wider format or split the sum"
        )
    return round_down_scalar(threshold, fmt)


def lut_domain(num_terms: int, fmt: FloatFormat) -> tuple[float, float]:
    """[ln(m u), T]: every exp argument is <= T, and below ln(m u) exp rounds to 0 in ``fmt``.

    A table exp can therefore clamp its argument to the lower end without changing the result.
    """
    return math.log(fmt.min_normal * fmt.unit_roundoff), softmax_threshold(num_terms, fmt)


def _conditional_softmax(
    z: torch.Tensor, dim: int, threshold: float, lower_threshold: float, arith: GraphArithmetic
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, exp arguments)."""
    z_max = torch.amax(z, dim=dim, keepdim=True)
    no_shift = torch.zeros_like(z_max)
    # Nested selects rather than a boolean "or": converts to two MIL select ops.
    shift = torch.where(
        z_max > arith.const(threshold),
        z_max,
        torch.where(z_max < arith.const(lower_threshold), z_max, no_shift),
    )
    arguments = arith.round(z - shift)
    exponentials = arith.round(torch.exp(arguments))
    return arith.round(exponentials / arith.sum(exponentials, dim)), arguments


def conditional_rescaled_softmax(
    z: torch.Tensor, dim: int, threshold: float, lower_threshold: float = 0.0
) -> torch.Tensor:
    """softmax(z - c) along ``dim`` with c = max z if max z is outside [lower, threshold], else 0.

    ``threshold`` comes from :func:`softmax_threshold`. The default ``lower_threshold = 0``
    keeps the denominator >= 1 without a shift and protects rows whose logits are all very
    negative (fully masked rows at -1e4), where exp would flush every term to zero.
    """
    probabilities, _ = _conditional_softmax(z, dim, threshold, lower_threshold, GraphArithmetic())
    return probabilities


@dataclass(frozen=True)
class SoftmaxEmulation:
    """Probabilities computed in a format, the arguments exp saw, and whether any op overflowed."""

    output: torch.Tensor
    exp_arguments: torch.Tensor
    overflowed: bool


def emulate_softmax(
    z: torch.Tensor,
    dim: int,
    threshold: float,
    lower_threshold: float = 0.0,
    fmt: FloatFormat = FP16,
    accumulate_fmt: FloatFormat | None = None,
) -> SoftmaxEmulation:
    """Run :func:`conditional_rescaled_softmax` with every op rounded to ``fmt`` (float64 out).

    ``z`` is first rounded to ``fmt``; the sum accumulates in order in ``accumulate_fmt``.
    """
    arith = EmulatedArithmetic(fmt, accumulate_fmt)
    probabilities, arguments = _conditional_softmax(
        arith.round(z.double()), dim, threshold, lower_threshold, arith
    )
    return SoftmaxEmulation(probabilities, arguments, arith.overflowed)


def softmax_sum_error_bound(
    num_terms: int, fmt: FloatFormat, accumulate_fmt: FloatFormat | None = None
) -> float:
    """Bound on |sum of the computed probabilities - 1| (independent of exp's accuracy).

    With D the computed denominator and e_i the computed exponentials, sum e_i / D lies in
    [1 / growth, 1 / shrink] (shrink: the accumulator's worst relative loss); each quotient adds
    one rounding and at most m u of underflow.
    """
    accumulate_fmt = accumulate_fmt or fmt
    u, tiny = fmt.unit_roundoff, fmt.min_normal * fmt.unit_roundoff
    growth = (1 + u) * min((1 + accumulate_fmt.unit_roundoff) ** (num_terms - 1), 2.0)
    shrink = (1 - u) / (1 + (num_terms - 1) * accumulate_fmt.unit_roundoff)
    underflow = num_terms * tiny
    return max(1 - (1 - u) / growth, (1 + u) / shrink - 1) + underflow
