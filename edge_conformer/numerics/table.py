"""The concrete numbers of docs/numerics.md, generated from the code that uses them.

Run ``python -m edge_conformer.numerics.table`` to print the tables; a test checks that the
docs contain them verbatim.
"""

from __future__ import annotations

from edge_conformer.numerics.error_bounds import mean_error_coefficient, post_centring_rounding
from edge_conformer.numerics.formats import BF16, FP16, FP32, FloatFormat
from edge_conformer.numerics.prenorm import (
    augmented_sum_range,
    computed_sum_range,
    prenormalizer_constant,
    safety_margins,
)
from edge_conformer.numerics.softmax import lut_domain, softmax_sum_error_bound

TABLE_FORMATS = (FP16, BF16, FP32)
TABLE_SIZES = (176, 256, 512)
TABLE_POWERS = (1.0, 2.0)


def _number(value: float) -> str:
    return f"{value:.3g}"


def _interval(low: float, high: float) -> str:
    return f"[{_number(low)}, {_number(high)}]"


def _norm_row(fmt: FloatFormat, d: int, p: float) -> str:
    k = prenormalizer_constant(d, p, fmt)
    cells = [fmt.name, str(d), f"{p:g}", _number(k)]
    if p == 1:
        # The statistic is d / k = d for every input and is never formed (y = z).
        cells += ["d = " + str(d), "not formed", "-", "-"]
    else:
        over, under = safety_margins(d, p, fmt)
        over32, under32 = safety_margins(d, p, fmt, FP32)
        cells += [
            _interval(*augmented_sum_range(d, p, k)),
            _interval(*computed_sum_range(d, p, k, fmt)),
            f"{_number(over)} / {_number(under)}",
            f"{_number(over32)} / {_number(under32)}",
        ]
    for accumulate_fmt in (fmt, FP32):
        theta, _ = post_centring_rounding(d, p, fmt, accumulate_fmt)
        cells.append(
            f"{_number(mean_error_coefficient(d, fmt, accumulate_fmt))} / {_number(theta)}"
        )
    return "| " + " | ".join(cells) + " |"


def norm_table() -> str:
    """Pre-normaliser constants, ranges, margins and error coefficients."""
    header = (
        "| format | d | p | k* | exact range of v | computed range of v | margins, "
        "format acc. (over / under) | margins, FP32 acc. | c_mu / theta, format acc. "
        "| c_mu / theta, FP32 acc. |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [
        _norm_row(fmt, d, p) for fmt in TABLE_FORMATS for d in TABLE_SIZES for p in TABLE_POWERS
    ]
    return "\n".join([header, *rows])


def _softmax_row(fmt: FloatFormat, num_terms: int) -> str:
    low, high = lut_domain(num_terms, fmt)
    cells = [
        fmt.name,
        str(num_terms),
        f"{high:.6g}",
        f"[{low:.5g}, {high:.6g}]",
        _number(softmax_sum_error_bound(num_terms, fmt)),
        _number(softmax_sum_error_bound(num_terms, fmt, FP32)),
    ]
    return "| " + " | ".join(cells) + " |"


def softmax_table() -> str:
    """Softmax thresholds, lookup-table domains and sum-to-one bounds."""
    header = (
        "| format | S | threshold T | LUT domain | sum-to-one bound, format acc. "
        "| FP32 acc. |\n|---|---|---|---|---|---|"
    )
    rows = [_softmax_row(fmt, num_terms) for fmt in TABLE_FORMATS for num_terms in TABLE_SIZES]
    return "\n".join([header, *rows])


if __name__ == "__main__":
    print(norm_table())
    print()
    print(softmax_table())
