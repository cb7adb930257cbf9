"""Pre-normalised Lp layer normalisation that cannot overflow or underflow (docs/numerics.md).

Lp layer normalisation over ``d`` channels, ``p >= 1``::

    y = (x - mean x) / (mean |x - mean x|^p + eps)^(1/p)        (p = 2: LayerNorm, p = 1: MAD norm)

The stable kernel ("mad") runs in two stages, both exact in real arithmetic because the norm is
scale invariant once eps is rescaled with the data:

1. Range reduction: divide x by a = max|x| (plus a tiny floor), so the mean and the centring
   work on values in [-1, 1] and cannot overflow.
2. MAD pre-normaliser: divide the centred vector by s = k * MAD+, where MAD+ is the mean
   absolute deviation with eps folded in as one extra entry, and k = k*(d, p, format) centres the
   guaranteed range of the pre-normalised statistic geometrically inside the format's safe range.

``prenormalizer="maxabs"`` is stage 1 alone (the usual "divide by the max, rescale eps" fix: no
overflow, but near-constant inputs can underflow) and ``"none"`` is the textbook formula.

The torch functions use only abs, amax, sum/mean, sub, mul, div, pow, sqrt, rsqrt, maximum and
full_like, with no Python branching on tensor values, so `torch.export` captures them into a
Core ML program as they are, one MIL op per emulated op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edge_conformer.numerics.arithmetic import EmulatedArithmetic, GraphArithmetic
from edge_conformer.numerics.formats import FP16, FloatFormat, round_scalar

PRENORMALIZERS = ("none", "maxabs", "mad")

# --------------------------------------------------------------------------------------------
# Theory: ranges of the pre-normalised statistic and the optimal constant
# --------------------------------------------------------------------------------------------


def guaranteed_sum_range(d: int, p: float, k: float) -> tuple[float, float]:
    """Range of sum_i |c_i / s|^p over all non-zero centred c (sum c = 0), s = k * mean|c|.

    Exact arithmetic, no eps. Lower end: power-mean inequality; upper end: convexity, attained
    by two opposite spikes.
    """
    return d * k**-p, 2.0 * (d / (2.0 * k)) ** p


def augmented_sum_range(d: int, p: float, k: float) -> tuple[float, float]:
    """Range of the statistic the kernel forms, over every vector and every eps (exact arithmetic).

    The kernel pre-normalises the d + 1 entries (|c_1|, ..., |c_d|, (d eps)^(1/p)) by
    s = k * (their sum) / d, so the statistic is (d/k)^p * ||w||_p^p / ||w||_1^p for a
    non-negative vector w of n = d + 1 entries: between (d/k)^p n^(1-p) and (d/k)^p.
    """
    scale = (d / k) ** p
    return scale * (d + 1) ** (1.0 - p), scale


def _accumulation_factors(d: int, fmt: FloatFormat, accumulate_fmt: FloatFormat):
    """(growth, shrink) for a sum of d non-negative terms accumulated in order.

    growth bounds (sum accumulated, stored, plus one more term) / (exact sum) from above:
    min((1 + u_A)^(d-1), 2) (1 + u)^2, the 2 because each addition errs by at most the term
    added. shrink = 1 / (1 + (d-1) u_A) bounds the accumulated sum / exact sum from below,
    since each step loses at most u_A times the computed partial sum, itself <= the total.
    """
    u, u_acc = fmt.unit_roundoff, accumulate_fmt.unit_roundoff
    growth = min((1 + u_acc) ** (d - 1), 2.0) * (1 + u) ** 2
    return growth, 1 / (1 + (d - 1) * u_acc)


def _range_coefficients(
    d: int, p: float, fmt: FloatFormat, accumulate_fmt: FloatFormat
) -> tuple[float, float, float, float]:
    """(L1, L0, U1, U0) with L1 K^p - L0 <= computed statistic <= U1 K^p + U0, K = d / k.

    Every rounding of the kernel is accounted for; see "Floating-point range" in the docs.
    """
    u, tiny = fmt.unit_roundoff, fmt.min_normal * fmt.unit_roundoff
    n = d + 1
    growth, shrink = _accumulation_factors(d, fmt, accumulate_fmt)
    upper = growth * (1 + u) ** (p + 1) * (1 - u) ** (-4 * p) / shrink
    lower = (1 - u) ** (p + 3) * ((1 + u) ** 2 * growth) ** -p * shrink * n ** (1.0 - p)
    slop = 3 * n * tiny  # underflow moves each term by less than 3 m u
    return lower, slop * (1 - u) ** 2, upper, slop * growth


def computed_sum_range(
    d: int, p: float, k: float, fmt: FloatFormat, accumulate_fmt: FloatFormat | None = None
) -> tuple[float, float]:
    """Guaranteed range of the statistic as computed in ``fmt`` (sums in ``accumulate_fmt``).

    The upper end always holds. The lower end holds whenever the pre-normaliser s is not floored
    at m (near-constant inputs); when it is, the statistic is still >= m (1 - u)^(p+2) > 0.
    """
    lower, lower_slop, upper, upper_slop = _range_coefficients(d, p, fmt, accumulate_fmt or fmt)
    scale = (d / k) ** p
    return lower * scale - lower_slop, upper * scale + upper_slop


def _accurate_range(d: int, fmt: FloatFormat) -> tuple[float, float]:
    """[n m, M]: no overflow, and underflowing terms cost at most about one rounding in total."""
    return (d + 1) * fmt.min_normal, fmt.max_finite


def _finite_range(d: int, fmt: FloatFormat) -> tuple[float, float]:
    """[n x smallest subnormal, M]: no overflow, and the statistic cannot flush to zero."""
    return (d + 1) * fmt.smallest_subnormal, fmt.max_finite


def feasible_constant_range(
    d: int, p: float, fmt: FloatFormat, accumulate_fmt: FloatFormat | None = None
) -> tuple[float, float]:
    """(k_min, k_max): every k in it keeps the computed statistic inside [n m, M].

    Empty (k_min > k_max) when the guaranteed range is wider than the format's accurate range.
    """
    lower, lower_slop, upper, upper_slop = _range_coefficients(d, p, fmt, accumulate_fmt or fmt)
    low, high = _accurate_range(d, fmt)
    largest_scale = (high - upper_slop) / upper
    smallest_scale = (low + lower_slop) / lower
    return d / largest_scale ** (1 / p), d / smallest_scale ** (1 / p)


def _centred_scale(d: int, p: float, fmt: FloatFormat, target: tuple[float, float]) -> float:
    """K^p with equal margins high / top = bottom / low, for the range [L1 K^p - L0, U1 K^p + U0].

    The positive root of U1 L1 x^2 + (U0 L1 - U1 L0) x - (U0 L0 + high low) = 0; without the
    small underflow slops L0, U0 it is sqrt(high low / (U1 L1)).
    """
    lower, lower_slop, upper, upper_slop = _range_coefficients(d, p, fmt, fmt)
    low, high = target
    a = upper * lower
    b = upper_slop * lower - upper * lower_slop
    c = upper_slop * lower_slop + high * low
    return (-b + math.sqrt(b * b + 4 * a * c)) / (2 * a)


def prenormalizer_constant(d: int, p: float, fmt: FloatFormat) -> float:
    """The optimal k in s = k * MAD+ for d channels, the Lp norm and the format.

    Optimal: the worst-case computed range of the statistic (accumulating in ``fmt`` itself)
    sits geometrically centred in the accurate range [n m, M], which maximises the smaller of
    the two margins. If the range is too wide for that, overflow is ruled out first (the top
    is reached by every constant or all-zero vector) and the range is centred in the finite
    range [n x smallest subnormal, M] as far as that allows.
    For p = 1 the statistic is d/k up to rounding for every input, so any k is as safe; k = 1
    makes the pre-normalised vector the output itself and saves the final scaling.
    """
    if p == 1:
        return 1.0
    k_min, k_max = feasible_constant_range(d, p, fmt)
    if k_min <= k_max:
        return d / _centred_scale(d, p, fmt, _accurate_range(d, fmt)) ** (1 / p)
    _, _, upper, upper_slop = _range_coefficients(d, p, fmt, fmt)
    largest_scale = (fmt.max_finite - upper_slop) / upper
    scale = min(_centred_scale(d, p, fmt, _finite_range(d, fmt)), largest_scale)
    return d / scale ** (1 / p)


def safety_margins(
    d: int, p: float, fmt: FloatFormat, accumulate_fmt: FloatFormat | None = None
) -> tuple[float, float]:
    """(M / top of range, bottom of range / (n m)) at the optimal k; both > 1 means safe."""
    low, high = computed_sum_range(d, p, prenormalizer_constant(d, p, fmt), fmt, accumulate_fmt)
    accurate_low, accurate_high = _accurate_range(d, fmt)
    return accurate_high / high, low / accurate_low


def range_reduction_floor(d: int, p: float, eps: float, fmt: FloatFormat) -> float:
    """a_min added to max|x|: keeps a > 0 and the eps entry (d eps)^(1/p) / a at most d."""
    return max((d * eps) ** (1 / p) / d, fmt.smallest_subnormal)


def epsilon_floor(p: float, fmt: FloatFormat) -> float:
    """Floor of the eps entry: keeps MAD+ > 0, and the statistic >= m if s is floored at m.

    A power of two >= m^(1 + 1/p) (so exactly representable), at least the smallest subnormal.
    """
    exponent = math.ceil(math.log2(fmt.min_normal) * (1 + 1 / p))
    return max(2.0**exponent, fmt.smallest_subnormal)


# --------------------------------------------------------------------------------------------
# Kernels, written once for the exported graph and for the emulation
# --------------------------------------------------------------------------------------------


def _abs_pow(t: torch.Tensor, p: float, arith: GraphArithmetic) -> torch.Tensor:
    if p == 1:
        return t.abs()
    if p == 2:
        return arith.round(t * t)
    return arith.round(t.abs().pow(arith.const(p)))


def _inverse_root(v: torch.Tensor, p: float, arith: GraphArithmetic) -> torch.Tensor:
    """v^(-1/p); rsqrt for p = 2."""
    if p == 2:
        return arith.round(torch.rsqrt(v))
    return arith.round(v.pow(arith.const(-1.0 / p)))


def _root(v: torch.Tensor, p: float, arith: GraphArithmetic) -> torch.Tensor:
    """v^(1/p); sqrt for p = 2."""
    if p == 2:
        return arith.round(torch.sqrt(v))
    return arith.round(v.pow(arith.const(1.0 / p)))


def _divide_by_root(
    centred: torch.Tensor, statistic: torch.Tensor, p: float, arith: GraphArithmetic
) -> torch.Tensor:
    """centred / statistic^(1/p), as the textbook formulas write it."""
    if p == 1:
        return arith.round(centred / statistic)
    return arith.round(centred * _inverse_root(statistic, p, arith))


def _channel_count(x: torch.Tensor, dim: int) -> int:
    """d as a Python int: the constants derived from it are computed in Python and enter the
    exported program as constants, not as integer ops on a tensor's shape."""
    return int(x.shape[dim])


def _centre(x: torch.Tensor, dim: int, arith: GraphArithmetic) -> torch.Tensor:
    return arith.round(x - arith.mean(x, dim))


def _plain_norm(x, eps, dim, p, arith):
    centred = _centre(x, dim, arith)
    statistic = arith.round(arith.mean(_abs_pow(centred, p, arith), dim) + arith.const(eps))
    return _divide_by_root(centred, statistic, p, arith), statistic


def _reduce_range(x, eps, dim, p, fmt, arith):
    """Stage 1: (x / a, a) with a = max|x| + a_min, so every |x / a| <= 1."""
    floor = range_reduction_floor(_channel_count(x, dim), p, eps, fmt)
    scale = arith.round(torch.amax(x.abs(), dim=dim, keepdim=True) + arith.const(floor))
    return arith.round(x / scale), scale


def _maxabs_norm(x, eps, dim, p, fmt, arith):
    reduced, scale = _reduce_range(x, eps, dim, p, fmt, arith)
    centred = _centre(reduced, dim, arith)
    # eps / a^p computed as (eps^(1/p) / a)^p: the quotient cannot overflow while a >= a_min.
    scaled_eps = _abs_pow(arith.round(arith.constant_like(scale, eps ** (1 / p)) / scale), p, arith)
    statistic = arith.round(arith.mean(_abs_pow(centred, p, arith), dim) + scaled_eps)
    return _divide_by_root(centred, statistic, p, arith), statistic


def _mad_norm(x, eps, dim, p, fmt, arith):
    d = _channel_count(x, dim)
    reduced, scale = _reduce_range(x, eps, dim, p, fmt, arith)
    centred = _centre(reduced, dim, arith)
    # eps enters as one more entry of the vector, (d eps)^(1/p), rescaled like the data.
    eps_entry = arith.floor(
        arith.round(arith.constant_like(scale, (d * eps) ** (1 / p)) / scale), epsilon_floor(p, fmt)
    )
    mad_sum = arith.round(arith.sum(centred.abs(), dim) + eps_entry)  # d * MAD+
    k = prenormalizer_constant(d, p, fmt)
    # s = k * MAD+ = mad_sum * (k / d). Any s > 0 gives the exact result; the floor at m only
    # matters for near-constant inputs, where it keeps s normal.
    prenormalizer = arith.floor(arith.round(mad_sum * arith.const(k / d)), fmt.min_normal)
    normalised = arith.round(centred / prenormalizer)
    if p == 1:
        # With k = 1, s is MAD+ itself and the pre-normalised vector is the output.
        return normalised, prenormalizer
    eps_term = _abs_pow(arith.round(eps_entry / prenormalizer), p, arith)
    statistic = arith.round(arith.sum(_abs_pow(normalised, p, arith), dim) + eps_term)
    # d^(1/p) / v^(1/p) as a division by sqrt (p = 2): rsqrt converts to an op that adds an
    # epsilon, and the division rounds as often as the product with a reciprocal root would.
    root = _root(statistic, p, arith)
    gain = arith.round(arith.constant_like(root, d ** (1 / p)) / root)
    return arith.round(normalised * gain), statistic


def _normalise(x, eps, dim, p, prenormalizer, fmt, arith):
    """(normalised output, the statistic its denominator is built from)."""
    if prenormalizer == "none":
        return _plain_norm(x, eps, dim, p, arith)
    if prenormalizer == "maxabs":
        return _maxabs_norm(x, eps, dim, p, fmt, arith)
    return _mad_norm(x, eps, dim, p, fmt, arith)


def _affine(y, weight, bias, dim, arith):
    shape = [1] * y.dim()
    shape[dim] = -1
    return arith.round(arith.round(y * weight.reshape(shape)) + bias.reshape(shape))


def _check_arguments(eps: float, p: float, prenormalizer: str, fmt: FloatFormat) -> None:
    if prenormalizer not in PRENORMALIZERS:
        raise ValueError(f"prenormalizer must be one of {PRENORMALIZERS}, got {prenormalizer!r}")
    if not p >= 1:
        raise ValueError(f"the Lp norm needs p >= 1, got {p}")
    if round_scalar(p, fmt) != p:
        raise ValueError(f"p = {p} is not representable in {fmt.name}; pick one that is")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")


# --------------------------------------------------------------------------------------------
# Public torch API
# --------------------------------------------------------------------------------------------


def stable_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    dim: int,
    p: float = 2.0,
    prenormalizer: str = "mad",
    fmt: FloatFormat = FP16,
) -> torch.Tensor:
    """Lp layer normalisation over ``dim`` that cannot overflow or underflow in ``fmt``.

    Computes (x - mean) / (mean|x - mean|^p + eps)^(1/p) * weight + bias.

    ``weight`` and ``bias`` have length ``x.shape[dim]`` and broadcast along ``dim`` (``dim=1``
    for a (B, C, 1, S) tensor, ``dim=-1`` for (B, T, C)). ``fmt`` picks the constants the
    pre-normaliser needs; the computation runs in the dtype of ``x``. In exact arithmetic the
    result does not depend on the pre-normaliser.
    """
    _check_arguments(eps, p, prenormalizer, fmt)
    graph = GraphArithmetic()
    normalised, _ = _normalise(x, eps, dim, p, prenormalizer, fmt, graph)
    return _affine(normalised, weight, bias, dim, graph)


def stable_mad_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    dim: int,
    prenormalizer: str = "mad",
    fmt: FloatFormat = FP16,
) -> torch.Tensor:
    """The model's MAD norm, (x - mean) / (mean|x - mean| + eps) * weight + bias: the p = 1 case."""
    return stable_layer_norm(x, weight, bias, eps, dim, 1.0, prenormalizer, fmt)


@dataclass(frozen=True)
class NormEmulation:
    """Result of running a norm with every intermediate rounded to a format.

    ``statistic`` is the quantity the denominator is built from (the pre-normalised sum for
    "mad", the variance-like mean for the others; s itself for "mad" at p = 1).
    """

    output: torch.Tensor
    statistic: torch.Tensor
    overflowed: bool
    underflowed: bool


def emulate_layer_norm(
    x: torch.Tensor,
    eps: float,
    dim: int = -1,
    p: float = 2.0,
    prenormalizer: str = "mad",
    fmt: FloatFormat = FP16,
    accumulate_fmt: FloatFormat | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> NormEmulation:
    """Run the exact op sequence of :func:`stable_layer_norm` in ``fmt`` (float64 in and out).

    ``x`` is first rounded to ``fmt``. Reductions accumulate in order in ``accumulate_fmt``
    (default: ``fmt`` itself, the worst case). ``overflowed``: some intermediate was inf/nan;
    ``underflowed``: the statistic flushed to zero somewhere.
    """
    _check_arguments(eps, p, prenormalizer, fmt)
    arith = EmulatedArithmetic(fmt, accumulate_fmt)
    rounded_x = arith.round(x.double())
    output, statistic = _normalise(rounded_x, eps, dim, p, prenormalizer, fmt, arith)
    if weight is not None and bias is not None:
        weight, bias = arith.round(weight.double()), arith.round(bias.double())
        output = _affine(output, weight, bias, dim, arith)
    return NormEmulation(output, statistic, arith.overflowed, bool((statistic == 0).any()))
