"""Binary floating-point formats and their emulation on FP32/FP64 tensors.

A format is described by the three numbers the analysis in ``docs/numerics.md`` needs: the
largest finite value ``M``, the smallest normal value ``m`` and the number of stored mantissa
bits ``t`` (unit roundoff ``u = 2**-(t+1)``). Emulation rounds a wider tensor to the format and
back, which is exact for +, -, *, / and sqrt (the working precision has more than ``2t + 2``
bits), and models an accumulator of that format by rounding every term and every partial sum.

These are the one definition of the formats (FP16's 65504, 2^-14, ...) and of how reductions
accumulate: the proofs' emulation (``arithmetic.py``) and the package executor
(``edge_conformer/mil/fp16.py``) both call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FloatFormat:
    """An IEEE-754-style binary format with gradual underflow and round-to-nearest-even."""

    name: str
    max_finite: float
    min_normal: float
    mantissa_bits: int
    dtype: torch.dtype

    @property
    def unit_roundoff(self) -> float:
        """u = 2^-(t+1): the largest relative error of rounding a normal number."""
        return 2.0 ** -(self.mantissa_bits + 1)

    @property
    def smallest_subnormal(self) -> float:
        """The smallest positive number of the format, m * 2^-t = 2 m u."""
        return self.min_normal * 2.0**-self.mantissa_bits

    def ulp(self, x: torch.Tensor) -> torch.Tensor:
        """The spacing of the format at each |x| rounded to it: 2^(e - t) for 2^e <= |x| < 2^(e+1),
        and the smallest subnormal below m. Same dtype as ``x``."""
        magnitude = round_to_format(x.abs(), self).clamp(min=self.min_normal)
        # magnitude = mantissa * 2^exponent with the mantissa in [1/2, 1)
        _, exponent = torch.frexp(magnitude)
        return torch.ldexp(torch.ones_like(magnitude), exponent - 1 - self.mantissa_bits)


FP16 = FloatFormat("fp16", 65504.0, 2.0**-14, 10, torch.float16)
BF16 = FloatFormat("bf16", float(torch.finfo(torch.bfloat16).max), 2.0**-126, 7, torch.bfloat16)
FP32 = FloatFormat("fp32", float(torch.finfo(torch.float32).max), 2.0**-126, 23, torch.float32)

FORMATS = {fmt.name: fmt for fmt in (FP16, BF16, FP32)}


def get_format(name: str) -> FloatFormat:
    """Look a format up by name (``fp16``, ``bf16`` or ``fp32``)."""
    if name not in FORMATS:
        raise ValueError(f"unknown float format {name!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[name]


def round_to_format(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Round an FP32/FP64 tensor to ``fmt`` (overflow gives inf), returned in the input dtype."""
    return x.to(fmt.dtype).to(x.dtype)


def round_scalar(value: float, fmt: FloatFormat) -> float:
    """Round one Python float to ``fmt``: what a constant becomes in a program of that format."""
    return float(round_to_format(torch.tensor(value, dtype=torch.float64), fmt))


def round_down_scalar(value: float, fmt: FloatFormat) -> float:
    """The largest number of ``fmt`` that is <= ``value`` (``value`` finite, within range)."""
    nearest = round_scalar(value, fmt)
    if nearest <= value:
        return nearest
    # One step towards -inf: move the bit pattern by one unit in the last place.
    bits_dtype = {torch.float16: torch.int16, torch.bfloat16: torch.int16}.get(
        fmt.dtype, torch.int32
    )
    bits = torch.tensor(nearest, dtype=fmt.dtype).view(bits_dtype)
    step = -1 if nearest > 0 else 1
    return float((bits + step).view(fmt.dtype).double())


_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def _reduced_dims(x: torch.Tensor, dim: int | tuple[int, ...]) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(axis % x.dim() for axis in dims)


def _kept_dims_shape(x: torch.Tensor, dims: tuple[int, ...]) -> list[int]:
    return [1 if axis in dims else size for axis, size in enumerate(x.shape)]


def accumulate_sum(
    x: torch.Tensor, dim: int | tuple[int, ...], fmt: FloatFormat, keepdim: bool = False
) -> torch.Tensor:
    """Sum over ``dim`` in order in an accumulator of format ``fmt`` (result in ``x``'s dtype).

    Every term is rounded to ``fmt`` (an accumulator adds numbers of its own format; terms that
    are already numbers of ``fmt``, as in the emulation, are unchanged) and every partial sum is
    rounded to ``fmt``. This is the worst case of a hardware reduction whose accumulator has the
    format ``fmt`` (sequential order maximises the classical error bound). Several dims are
    summed as one, in row-major order; the loop runs over the reduced elements only.
    """
    dims = _reduced_dims(x, dim)
    kept_shape = [size for axis, size in enumerate(x.shape) if axis not in dims]
    front = tuple(range(len(dims)))
    terms = x.movedim(dims, front).reshape(-1, *kept_shape).to(fmt.dtype).contiguous()
    # Overflow to inf (and inf - inf = nan) is part of the model, not an error to warn about.
    with np.errstate(over="ignore", invalid="ignore"):
        if fmt.dtype in _NUMPY_DTYPES:
            # NumPy's accumulate is a running sum, strictly in order (unlike its pairwise
            # reductions), each step one correctly rounded addition in fmt: the loop below in
            # one vectorised call, several times faster for the short rows of a package.
            total = np.add.accumulate(terms.numpy(), axis=0)[-1]
        else:  # NumPy has no bfloat16
            total = terms[0] * 1  # a copy that keeps -0.0
            for row in terms[1:]:
                # One correctly rounded addition in fmt: torch adds bf16 in fp32 and rounds
                # once, and fp32's 24 significant bits are at least 2 (t + 1) + 2 (innocuous
                # double rounding).
                total += row
    total = torch.as_tensor(total).to(x.dtype)
    return total.reshape(_kept_dims_shape(x, dims)) if keepdim else total


def accumulate_mean(
    x: torch.Tensor, dim: int | tuple[int, ...], fmt: FloatFormat, keepdim: bool = False
) -> torch.Tensor:
    """A reduce_mean as docs/numerics.md section 1 models it: the sum over ``dim`` accumulated by
    :func:`accumulate_sum` in ``fmt``, divided by the count, the quotient rounded once to ``fmt``.

    A reduce_mean is one op: its sum lives in the accumulator, and only its result is stored.
    So the sum is neither rounded to a narrower storage format before the division (the mean
    of large values stays finite as long as the accumulated sum does) nor multiplied by a
    rounded 1/d. Rounding the quotient to ``fmt`` and then to a storage format whose t + 1
    significant bits are at most (those of ``fmt`` - 2) / 2 (fp16 and bf16 under fp32) equals
    rounding it to the storage format directly.
    """
    dims = _reduced_dims(x, dim)
    count = math.prod(x.shape[axis] for axis in dims)
    mean = round_to_format(accumulate_sum(x, dims, fmt, keepdim=True) / count, fmt)
    return mean if keepdim else mean.squeeze(dims)
