"""Binary floating-point formats and their emulation on FP32/FP64 tensors.

A format is described by the three numbers the analysis in ``docs/numerics.md`` needs: the
largest finite value ``M``, the smallest normal value ``m`` and the number of stored mantissa
bits ``t`` (unit roundoff ``u = 2**-(t+1)``). Emulation rounds a wider tensor to the format and
back, which is exact for +, -, *, / and sqrt (the working precision has more than ``2t + 2``
bits), and models an accumulator of that format by rounding every partial sum.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def accumulate_sum(
    x: torch.Tensor, dim: int, fmt: FloatFormat, keepdim: bool = False
) -> torch.Tensor:
    """Sum along ``dim`` in order, rounding every partial sum to ``fmt``.

    This is the worst case of a hardware reduction whose accumulator has the format ``fmt``
    (sequential order maximises the classical error bound). The other dimensions are processed
    together; the loop runs over the reduced dimension only.
    """
    terms = x.movedim(dim, 0)
    total = round_to_format(terms[0], fmt)
    for term in terms[1:]:
        total = round_to_format(total + term, fmt)
    return total.unsqueeze(dim) if keepdim else total
