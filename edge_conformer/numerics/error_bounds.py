"""Forward error bound of the "mad" pre-normalised Lp norm (docs/numerics.md, "Accuracy").

The bound is normwise in the input's scale: with sigma = (mean|x - mean x|^p + eps)^(1/p),

    kappa      = a / sigma                  (a >= max|x|: the range-reduction scale)
    kappa_mean = mean|x| / sigma
    kappa_p    = (mean|x|^p)^(1/p) / sigma
    Y          = max_i |y_i|                (exact output, <= min(2 kappa, d^(1/p)))

the computed output satisfies max_i |y_hat_i - y_i| <= A + theta (Y + A) + eps_z, where A
bounds the effect of rounding the input scale, the mean and the eps entry, theta the relative
rounding of everything after the centring, and eps_z the underflow of tiny outputs. The bound
is infinite when the input is too ill-conditioned for it (tau > 1/2) or so close to constant
that the pre-normaliser may be floored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edge_conformer.numerics.formats import FloatFormat
from edge_conformer.numerics.prenorm import (
    computed_sum_range,
    epsilon_floor,
    prenormalizer_constant,
    range_reduction_floor,
)


def lp_norm_reference(x: torch.Tensor, eps: float, dim: int, p: float) -> torch.Tensor:
    """The exact formula in float64: (x - mean) / (mean|x - mean|^p + eps)^(1/p)."""
    x = x.double()
    centred = x - x.mean(dim=dim, keepdim=True)
    return centred / (centred.abs().pow(p).mean(dim=dim, keepdim=True) + eps) ** (1 / p)


def post_centring_rounding(
    d: int, p: float, fmt: FloatFormat, accumulate_fmt: FloatFormat
) -> tuple[float, float]:
    """(theta, eps_z): relative error of every op after the centring, and the absolute error
    of outputs whose pre-normalised value underflows. theta is inf where no bound exists."""
    u, tiny = fmt.unit_roundoff, fmt.min_normal * fmt.unit_roundoff
    growth = min((1 + accumulate_fmt.unit_roundoff) ** (d - 1), 2.0) * (1 + u) ** 2
    if p == 1:
        # y = centred / s with s = (sum|c| + e) * (1/d): the sum, two roundings for s, one for y.
        mad_error = growth - 1
        if mad_error >= 1:
            return math.inf, math.inf
        return (1 + u) / ((1 - u) ** 2 * (1 - mad_error)) - 1, tiny
    low, high = computed_sum_range(d, p, prenormalizer_constant(d, p, fmt), fmt, accumulate_fmt)
    if low <= 0:
        return math.inf, math.inf
    statistic_error = growth * (1 + u) ** (p + 1) - 1 + 3 * growth * (d + 1) * tiny / low
    if statistic_error >= 1:
        return math.inf, math.inf
    root_error = (1 - statistic_error) ** (-1 / p) - 1
    # pow(v, fl(1/p)) instead of pow(v, 1/p): relative error up to u |ln v| / p (not sqrt).
    exponent_error = 0.0 if p == 2 else math.expm1(u * max(abs(math.log(low)), math.log(high)) / p)
    gain = (1 + u) ** 5 * (1 + root_error) * (1 + exponent_error)
    return gain - 1, tiny * gain * (d / low) ** (1 / p)


@dataclass(frozen=True)
class NormConditions:
    """Condition numbers of an input, one per normalised vector (sigma as in the module doc).

    kappa: a / sigma with a >= max|x| the range-reduction scale; kappa_mean: mean|x| / sigma;
    kappa_p: (mean|x|^p)^(1/p) / sigma; y_max: max|y|, the exact output's largest entry.
    """

    kappa: torch.Tensor
    kappa_mean: torch.Tensor
    kappa_p: torch.Tensor
    y_max: torch.Tensor


def lp_norm_conditions(
    x: torch.Tensor, eps: float, dim: int, p: float, fmt: FloatFormat
) -> NormConditions:
    """The condition numbers of ``x`` (numbers of ``fmt``), computed in float64."""
    x = x.double()
    d = x.shape[dim]
    centred = x - x.mean(dim=dim, keepdim=True)
    sigma = (centred.abs().pow(p).mean(dim=dim, keepdim=True) + eps) ** (1 / p)
    # The kernel's a = fl(max|x| + fl(a_min)) is at most this.
    scale = (1 + fmt.unit_roundoff) ** 2 * (
        x.abs().amax(dim=dim, keepdim=True) + range_reduction_floor(d, p, eps, fmt)
    )
    return NormConditions(
        kappa=(scale / sigma).squeeze(dim),
        kappa_mean=(x.abs().mean(dim=dim, keepdim=True) / sigma).squeeze(dim),
        kappa_p=(x.abs().pow(p).mean(dim=dim, keepdim=True) ** (1 / p) / sigma).squeeze(dim),
        y_max=(centred / sigma).abs().amax(dim=dim, keepdim=True).squeeze(dim),
    )


def mean_error_coefficient(d: int, fmt: FloatFormat, accumulate_fmt: FloatFormat) -> float:
    """c_mu: |computed mean of x/a - mean(x)/a| <= c_mu mean|x|/a + 4 m u.

    The sum's error is at most min((1 + u_A)^(d-1) - 1, 1) sum|x/a| (each addition errs by at
    most the smaller operand); then the rounding of x/a and the one rounding of the quotient
    sum / d (a reduce_mean stores only its result, docs/numerics.md section 1).
    """
    u = fmt.unit_roundoff
    sum_error = min((1 + accumulate_fmt.unit_roundoff) ** (d - 1) - 1, 1.0)
    return (1 + sum_error) * (1 + u) ** 2 - 1 + u


def lp_norm_error_bound_from_conditions(
    d: int,
    p: float,
    fmt: FloatFormat,
    conditions: NormConditions,
    accumulate_fmt: FloatFormat | None = None,
) -> torch.Tensor:
    """Bound on max_i |y_hat_i - y_i| of the "mad" kernel, given the input's condition numbers."""
    accumulate_fmt = accumulate_fmt or fmt
    u, m = fmt.unit_roundoff, fmt.min_normal
    tiny = m * u
    kappa, y_max = conditions.kappa, conditions.y_max
    d_root = d ** (1 / p)
    # Error of the centred vector: rounding x/a (relative to each x_i) plus the mean's error.
    mean_part = mean_error_coefficient(d, fmt, accumulate_fmt) * conditions.kappa_mean
    mean_part = mean_part + 5 * tiny * kappa
    worst_entry = (1 + u) * (u * kappa + mean_part)
    # tau: relative perturbation of the p-norm of (centred vector, eps entry), by Minkowski.
    tau = (
        (1 + u) * (u * conditions.kappa_p + mean_part)
        + kappa * (tiny + epsilon_floor(p, fmt)) / d_root
        + (1 + u) ** 2
        - 1
    )
    input_part = (worst_entry + (u + tau) * y_max) / (1 - tau)
    theta, underflow = post_centring_rounding(d, p, fmt, accumulate_fmt)
    total = input_part + theta * (y_max + input_part) + underflow
    # Beyond this kappa the pre-normaliser may be floored at m and the analysis does not apply.
    k = prenormalizer_constant(d, p, fmt)
    shrink = 1 / (1 + (d - 1) * accumulate_fmt.unit_roundoff)
    kappa_floor = (1 - u) ** 4 * shrink * (1 - tau) * d_root * k / (d * m)
    valid = (tau <= 0.5) & (kappa <= kappa_floor)
    return torch.where(valid, total, torch.full_like(total, math.inf))


def lp_norm_error_bound(
    x: torch.Tensor,
    eps: float,
    dim: int,
    p: float,
    fmt: FloatFormat,
    accumulate_fmt: FloatFormat | None = None,
) -> torch.Tensor:
    """Bound on max |emulated "mad" output - exact output| along ``dim``, one per vector.

    ``x`` holds numbers of ``fmt``; sums accumulate in ``accumulate_fmt`` (default ``fmt``).
    """
    conditions = lp_norm_conditions(x, eps, dim, p, fmt)
    return lp_norm_error_bound_from_conditions(x.shape[dim], p, fmt, conditions, accumulate_fmt)
