"""Property tests of edge_conformer.numerics against the claims of docs/numerics.md.

FP16/BF16 are emulated (every op rounded, sums accumulated in order); the bounds the tests
check are imported from the package, so the docs, the code and the tests state the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge_conformer.numerics import (
    BF16,
    FP16,
    FP32,
    FloatFormat,
    accumulate_mean,
    accumulate_sum,
    augmented_sum_range,
    computed_sum_range,
    conditional_rescaled_softmax,
    emulate_layer_norm,
    emulate_softmax,
    feasible_constant_range,
    get_format,
    guaranteed_sum_range,
    lp_norm_error_bound,
    lp_norm_reference,
    lut_domain,
    prenormalizer_constant,
    round_to_format,
    safety_margins,
    softmax_sum_error_bound,
    softmax_threshold,
    stable_layer_norm,
    stable_mad_norm,
)
from edge_conformer.numerics.arithmetic import EmulatedArithmetic
from edge_conformer.numerics.table import norm_table, softmax_table

PROPERTY = settings(max_examples=40, deadline=None)
FEW = settings(max_examples=20, deadline=None)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "numerics.md"

# --------------------------------------------------------------------------------------------
# Adversarial inputs
# --------------------------------------------------------------------------------------------

VECTOR_KINDS = (
    "spike",
    "two_opposite_spikes",
    "alternating",
    "tiny",
    "huge",
    "constant",
    "constant_plus_noise",
    "normal",
)
ROWS = 2


def _log_uniform(low: float, high: float, size, gen: torch.Generator) -> torch.Tensor:
    exponent = torch.rand(size, generator=gen, dtype=torch.float64)
    return torch.exp(math.log(low) + exponent * (math.log(high) - math.log(low)))


def _signs(size, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, size, generator=gen).double() * 2 - 1


def make_vectors(kind: str, d: int, fmt: FloatFormat, gen: torch.Generator) -> torch.Tensor:
    """ROWS vectors of d numbers of ``fmt`` (float64) that stress one part of the analysis."""
    big, small = 0.99 * fmt.max_finite, fmt.min_normal
    amplitude = _log_uniform(small, big, (ROWS, 1), gen) * _signs((ROWS, 1), gen)
    if kind in ("spike", "two_opposite_spikes"):
        x = torch.zeros(ROWS, d, dtype=torch.float64)
        positions = torch.randperm(d, generator=gen)[:2]
        x[:, positions[0]] = amplitude[:, 0]
        if kind == "two_opposite_spikes":
            x[:, positions[1]] = -amplitude[:, 0]
    elif kind == "alternating":
        x = amplitude * _signs((ROWS, d), gen)
    elif kind == "tiny":
        x = small * _log_uniform(0.01, 4.0, (ROWS, d), gen) * _signs((ROWS, d), gen)
    elif kind == "huge":
        x = (fmt.max_finite / d) * _log_uniform(0.5, d * 0.99, (ROWS, d), gen)
        x = x * _signs((ROWS, d), gen)
    elif kind == "constant":
        x = amplitude.expand(ROWS, d).clone()
    elif kind == "constant_plus_noise":
        amplitude = amplitude / 4
        relative_noise = _log_uniform(1e-4, 1e-1, (ROWS, 1), gen)
        noise = torch.randn(ROWS, d, generator=gen, dtype=torch.float64)
        x = amplitude * (1 + relative_noise * noise)
    else:
        scale = _log_uniform(100 * small, big / 100, (ROWS, 1), gen)
        x = scale * torch.randn(ROWS, d, generator=gen, dtype=torch.float64)
    return round_to_format(x, fmt)


@dataclass(frozen=True)
class NormCase:
    x: torch.Tensor
    fmt: FloatFormat
    p: float
    eps: float


@st.composite
def norm_cases(draw) -> NormCase:
    fmt = draw(st.sampled_from([FP16, BF16]))
    d = draw(st.one_of(st.integers(16, 600), st.sampled_from([176, 256, 512, 1024, 2048, 4096])))
    kind = draw(st.sampled_from(VECTOR_KINDS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return NormCase(
        x=make_vectors(kind, d, fmt, gen),
        fmt=fmt,
        p=draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
        eps=draw(st.sampled_from([1e-6, 1e-5, 1e-2])),
    )


# --------------------------------------------------------------------------------------------
# The MAD pre-normaliser in FP16 / BF16
# --------------------------------------------------------------------------------------------


def _assert_statistic_in_guaranteed_range(statistic, case: NormCase, accumulate_fmt) -> None:
    d = case.x.shape[-1]
    k = prenormalizer_constant(d, case.p, case.fmt)
    low, high = computed_sum_range(d, case.p, k, case.fmt, accumulate_fmt)
    # A floored pre-normaliser (near-constant input) still leaves the statistic >= m (1-u)^(p+2).
    floored_low = case.fmt.min_normal * (1 - case.fmt.unit_roundoff) ** (case.p + 2)
    assert (statistic <= high).all()
    assert (statistic >= min(low, floored_low)).all()


@pytest.mark.parametrize("accumulation", ["format", "fp32"])
@PROPERTY
@given(case=norm_cases())
def test_mad_prenormalizer_never_overflows_or_underflows_and_meets_the_error_bound(
    case: NormCase, accumulation: str
) -> None:
    accumulate_fmt = case.fmt if accumulation == "format" else FP32
    result = emulate_layer_norm(case.x, case.eps, -1, case.p, "mad", case.fmt, accumulate_fmt)

    assert not result.overflowed
    assert not result.underflowed
    if case.p != 1:
        _assert_statistic_in_guaranteed_range(result.statistic, case, accumulate_fmt)
    error = (result.output - lp_norm_reference(case.x, case.eps, -1, case.p)).abs().amax(-1)
    bound = lp_norm_error_bound(case.x, case.eps, -1, case.p, case.fmt, accumulate_fmt)
    assert (error <= bound).all(), f"error {error.tolist()} > bound {bound.tolist()}"


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_plain_formula_overflows_in_fp16_where_the_mad_prenormalizer_does_not(p: float) -> None:
    x = 300 * torch.randn(4, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    assert emulate_layer_norm(x, 1e-5, -1, p, "none", FP16).overflowed
    assert not emulate_layer_norm(x, 1e-5, -1, p, "mad", FP16).overflowed


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_maxabs_prenormalizer_underflows_on_near_constant_input(p: float) -> None:
    x = torch.full((1, 64), 1000.0, dtype=torch.float64)
    x[0, 3] = 1000.5

    maxabs = emulate_layer_norm(x, 1e-5, -1, p, "maxabs", FP16)
    mad = emulate_layer_norm(x, 1e-5, -1, p, "mad", FP16)

    assert maxabs.underflowed and not torch.isfinite(maxabs.output).all()
    assert not mad.underflowed and torch.isfinite(mad.output).all()


# --------------------------------------------------------------------------------------------
# The theory: ranges and the optimal constant
# --------------------------------------------------------------------------------------------


@FEW
@given(
    d=st.integers(2, 300),
    p=st.floats(1.0, 4.0),
    k=st.floats(0.1, 100.0),
    seed=st.integers(0, 2**31 - 1),
    sparsity=st.floats(0.0, 0.99),
)
def test_guaranteed_sum_range_holds_for_centred_vectors(d, p, k, seed, sparsity) -> None:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(d, generator=gen, dtype=torch.float64)
    c = c * (torch.rand(d, generator=gen, dtype=torch.float64) >= sparsity)
    c = c - c.mean()
    assume(c.abs().max() > 0)
    statistic = (c / (k * c.abs().mean())).abs().pow(p).sum().item()

    low, high = guaranteed_sum_range(d, p, k)
    assert low * (1 - 1e-9) <= statistic <= high * (1 + 1e-9)


@pytest.mark.parametrize("d, p, k", [(176, 2.0, 9.0), (512, 3.0, 16.0), (64, 1.5, 0.5)])
def test_guaranteed_sum_range_is_attained(d: int, p: float, k: float) -> None:
    def statistic(c: torch.Tensor) -> float:
        return (c / (k * c.abs().mean())).abs().pow(p).sum().item()

    two_spikes = torch.zeros(d, dtype=torch.float64)
    two_spikes[0], two_spikes[1] = 1.0, -1.0
    alternating = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(d // 2)

    low, high = guaranteed_sum_range(d, p, k)
    assert math.isclose(statistic(two_spikes), high, rel_tol=1e-12)
    assert math.isclose(statistic(alternating), low, rel_tol=1e-12)


@FEW
@given(
    d=st.integers(1, 300),
    p=st.floats(1.0, 4.0),
    k=st.floats(0.1, 100.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_augmented_sum_range_holds_for_every_vector_and_eps(d, p, k, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    entries = torch.rand(d + 1, generator=gen, dtype=torch.float64) ** 8  # |c_i| and the eps entry
    prenormalizer = k * entries.sum() / d
    statistic = (entries / prenormalizer).pow(p).sum().item()

    low, high = augmented_sum_range(d, p, k)
    assert low * (1 - 1e-9) <= statistic <= high * (1 + 1e-9)


@pytest.mark.parametrize("fmt", [FP16, BF16, FP32])
@pytest.mark.parametrize("d", [176, 256, 512])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_model_sizes_are_guaranteed_safe(fmt: FloatFormat, d: int, p: float) -> None:
    overflow_margin, underflow_margin = safety_margins(d, p, fmt)

    assert overflow_margin >= 1 and underflow_margin >= 1


@pytest.mark.parametrize("fmt", [FP16, BF16])
@pytest.mark.parametrize("d, p", [(176, 2.0), (512, 2.0), (512, 1.5), (256, 3.0)])
def test_optimal_constant_centres_the_range_inside_the_feasible_interval(
    fmt: FloatFormat, d: int, p: float
) -> None:
    k = prenormalizer_constant(d, p, fmt)
    k_min, k_max = feasible_constant_range(d, p, fmt)
    overflow_margin, underflow_margin = safety_margins(d, p, fmt)

    assert k_min <= k <= k_max
    assert math.isclose(overflow_margin, underflow_margin, rel_tol=1e-3)


# --------------------------------------------------------------------------------------------
# Exactness in FP32, in both layouts the model uses
# --------------------------------------------------------------------------------------------

LAYOUTS = {"channels_first": 1, "channels_last": -1}


def _to_layout(x_btc: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, T, C) -> (B, C, 1, T) for channels_first."""
    return x_btc.permute(0, 2, 1).unsqueeze(2) if layout == "channels_first" else x_btc


def _from_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.squeeze(2).permute(0, 2, 1) if layout == "channels_first" else x


@st.composite
def fp32_inputs(draw):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    d = draw(st.integers(8, 600))
    scale = draw(st.floats(1e-3, 1e3))
    offset = draw(st.floats(-3.0, 3.0)) * scale
    x = torch.randn(2, 5, d, generator=gen) * scale + offset
    weight, bias = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    return x, weight, bias, draw(st.sampled_from([1e-6, 1e-5, 1e-2]))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("prenormalizer", ["mad", "maxabs"])
@FEW
@given(inputs=fp32_inputs())
def test_stable_layer_norm_equals_torch_layer_norm_in_fp32(inputs, prenormalizer, layout) -> None:
    x, weight, bias, eps = inputs
    expected = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    dim = LAYOUTS[layout]
    out = stable_layer_norm(_to_layout(x, layout), weight, bias, eps, dim, 2.0, prenormalizer)

    torch.testing.assert_close(_from_layout(out, layout), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("prenormalizer", ["mad", "maxabs"])
@FEW
@given(inputs=fp32_inputs())
def test_stable_mad_norm_equals_the_plain_mad_formula_in_fp32(
    inputs, prenormalizer, layout
) -> None:
    x, weight, bias, eps = inputs
    centred = x - x.mean(dim=-1, keepdim=True)
    expected = centred / (centred.abs().mean(dim=-1, keepdim=True) + eps) * weight + bias

    out = stable_mad_norm(_to_layout(x, layout), weight, bias, eps, LAYOUTS[layout], prenormalizer)

    torch.testing.assert_close(_from_layout(out, layout), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1.5, 3.0])
def test_stable_layer_norm_is_exact_for_other_p_in_fp64(p: float) -> None:
    x = 7 * torch.randn(3, 4, 100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ones, zeros = torch.ones(100, dtype=torch.float64), torch.zeros(100, dtype=torch.float64)

    out = stable_layer_norm(x, ones, zeros, 1e-5, -1, p)

    torch.testing.assert_close(out, lp_norm_reference(x, 1e-5, -1, p), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p": 0.5}, "p >= 1"),
        ({"p": 1.1}, "not representable"),
        ({"prenormalizer": "rms"}, "prenormalizer"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, message: str) -> None:
    arguments = {"eps": 1e-5, "p": 2.0, "prenormalizer": "mad"} | kwargs
    ones = torch.ones(8)
    with pytest.raises(ValueError, match=message):
        stable_layer_norm(torch.randn(2, 8), ones, ones, dim=-1, **arguments)


# --------------------------------------------------------------------------------------------
# Conditional softmax re-scaling
# --------------------------------------------------------------------------------------------

LOGIT_KINDS = ("uniform", "scaled_normal", "masked", "near_threshold")


@st.composite
def logits(draw) -> torch.Tensor:
    num_terms = draw(st.integers(2, 1024))
    kind = draw(st.sampled_from(LOGIT_KINDS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = (3, num_terms)
    if kind == "uniform":
        z = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * 1e4
    elif kind == "scaled_normal":
        z = torch.randn(shape, generator=gen, dtype=torch.float64) * 10 ** draw(st.floats(-2, 4))
    elif kind == "masked":
        z = -1e4 + torch.randn(shape, generator=gen, dtype=torch.float64)
    else:
        threshold = softmax_threshold(num_terms, FP16)
        below = torch.rand(shape, generator=gen, dtype=torch.float64)
        z = threshold + draw(st.floats(-1, 1)) - below
    # Logits up to +-1e4 (the FP16 mask value); the docs assume |z| <= M/2.
    return round_to_format(z.clamp(-1e4, 1e4), FP16)


@PROPERTY
@given(z=logits())
def test_conditional_softmax_never_overflows_in_fp16_and_sums_to_one(z: torch.Tensor) -> None:
    num_terms = z.shape[-1]
    result = emulate_softmax(z, -1, softmax_threshold(num_terms, FP16), fmt=FP16)

    assert not result.overflowed
    deviation = (result.output.sum(-1) - 1).abs()
    assert (deviation <= softmax_sum_error_bound(num_terms, FP16)).all()


@PROPERTY
@given(z=logits())
def test_every_exp_argument_lies_in_the_lookup_table_domain(z: torch.Tensor) -> None:
    low, high = lut_domain(z.shape[-1], FP16)
    arguments = emulate_softmax(z, -1, high, fmt=FP16).exp_arguments

    assert (arguments <= high).all()
    # Below the table's lower end exp rounds to zero, so clamping there changes nothing.
    assert (round_to_format(torch.exp(arguments[arguments < low]), FP16) == 0).all()


@FEW
@given(z=logits())
def test_conditional_softmax_equals_torch_softmax_in_fp32(z: torch.Tensor) -> None:
    z = z.float()
    out = conditional_rescaled_softmax(z, -1, softmax_threshold(z.shape[-1], FP16))

    torch.testing.assert_close(out, torch.softmax(z, -1), rtol=0, atol=1e-6)


def test_inside_the_window_it_is_the_plain_formula_bit_for_bit() -> None:
    threshold = softmax_threshold(256, FP16)
    z = torch.rand(4, 256, generator=torch.Generator().manual_seed(0)) * threshold
    plain = torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)

    assert torch.equal(conditional_rescaled_softmax(z, -1, threshold), plain)


def test_plain_softmax_overflows_in_fp16_above_ln_max() -> None:
    z = torch.full((1, 16), 12.0, dtype=torch.float64)

    assert emulate_softmax(z, -1, math.inf, fmt=FP16).overflowed
    assert not emulate_softmax(z, -1, softmax_threshold(16, FP16), fmt=FP16).overflowed


def test_fully_masked_rows_need_the_lower_threshold() -> None:
    z = torch.full((2, 10), -1e4, dtype=torch.float64)
    threshold = softmax_threshold(10, FP16)

    protected = emulate_softmax(z, -1, threshold, fmt=FP16).output
    unprotected = emulate_softmax(z, -1, threshold, lower_threshold=-math.inf, fmt=FP16).output

    torch.testing.assert_close(protected, torch.full_like(z, 0.1), rtol=0, atol=1e-3)
    assert torch.isnan(unprotected).all()


@pytest.mark.parametrize("fmt", [FP16, BF16])
@pytest.mark.parametrize("num_terms", [2, 176, 512])
def test_softmax_threshold_is_the_largest_safe_value(fmt: FloatFormat, num_terms: int) -> None:
    threshold = softmax_threshold(num_terms, fmt)
    u = fmt.unit_roundoff
    growth = (1 + u) ** 2 * min((1 + u) ** (num_terms - 1), 2.0)
    next_up = threshold + 2.0 ** (math.floor(math.log2(threshold)) - fmt.mantissa_bits)

    assert num_terms * math.exp(threshold) * growth <= fmt.max_finite
    assert num_terms * math.exp(next_up) * growth > fmt.max_finite


def test_softmax_threshold_rejects_sums_that_overflow_anyway() -> None:
    with pytest.raises(ValueError, match="overflow"):
        softmax_threshold(100_000, FP16)


# --------------------------------------------------------------------------------------------
# Formats and their emulation
# --------------------------------------------------------------------------------------------


def test_formats_are_looked_up_by_name() -> None:
    assert get_format("fp16") is FP16 and get_format("bf16") is BF16 and get_format("fp32") is FP32
    with pytest.raises(ValueError, match="unknown float format"):
        get_format("fp8")


def test_unit_roundoff_and_smallest_subnormal() -> None:
    assert FP16.unit_roundoff == 2.0**-11 and BF16.unit_roundoff == 2.0**-8
    assert FP32.unit_roundoff == 2.0**-24
    assert FP16.smallest_subnormal == 2.0**-24


def test_round_to_format_keeps_the_dtype_and_overflows_to_inf() -> None:
    x = torch.tensor([1 / 3, 70000.0], dtype=torch.float64)

    rounded = round_to_format(x, FP16)

    assert rounded.dtype == torch.float64
    assert rounded.tolist() == [0.333251953125, math.inf]


def test_accumulate_sum_rounds_every_partial_sum() -> None:
    ones = torch.ones(3, 4096, dtype=torch.float64)

    # 256 + 1 is a tie in BF16 and 2048 + 1 in FP16: the sums stagnate there.
    assert accumulate_sum(ones, -1, BF16).tolist() == [256.0] * 3
    assert accumulate_sum(ones, -1, FP16).tolist() == [2048.0] * 3
    assert accumulate_sum(ones, 1, FP32, keepdim=True).shape == (3, 1)
    assert accumulate_sum(torch.full((100,), 1000.0), 0, FP16).item() == math.inf


def test_accumulate_sum_rounds_terms_and_sums_several_dims_in_order() -> None:
    x = torch.tensor([[1 / 3, 2048.0], [1.0, 1.0]], dtype=torch.float64)

    # Row-major order: 1/3 (rounded to FP16) + 2048 = 2048.33 rounds to 2048, + 1 + 1 ties down.
    assert accumulate_sum(x, (0, 1), FP16).item() == 2048.0
    assert accumulate_sum(x, (1, 0), FP32, keepdim=True).shape == (1, 1)
    assert accumulate_sum(x, (0, 1), FP32).item() == float(torch.tensor(2050 + 1 / 3).float())


def test_a_mean_rounds_only_the_quotient_of_the_accumulated_sum() -> None:
    large = torch.full((1, 176), 1000.0, dtype=torch.float64)

    # The sum 176000 exceeds FP16's range, the mean does not: only an FP16 accumulator overflows.
    assert accumulate_mean(large, -1, FP32).item() == 1000.0
    assert accumulate_mean(large, -1, FP16).item() == math.inf
    # fl(sum / 3), not fl(fl(sum) * fl(1/3)): 1/3 in FP16 is 0.33325..., 3 * 0.33325 != 1.
    thirds = torch.ones(3, dtype=torch.float64)
    assert accumulate_mean(thirds, 0, FP16).item() == 1.0
    assert EmulatedArithmetic(FP16, FP32).mean(thirds[None], -1).item() == 1.0


@pytest.mark.parametrize("fmt", [FP16, BF16])
def test_ulp_is_the_spacing_of_the_format(fmt: FloatFormat) -> None:
    x = torch.tensor([0.0, 1e-9, fmt.min_normal, 0.75, 1.0, 1.5, -3.0, 1e3, 0.99 * fmt.max_finite])
    rounded = round_to_format(x, fmt)

    ulp = fmt.ulp(x)

    # The next larger magnitude is one ulp away, and ulp is a power of two of the format.
    next_up = torch.nextafter(rounded.abs().to(fmt.dtype), torch.tensor(math.inf, dtype=fmt.dtype))
    assert torch.equal(next_up.double() - rounded.abs().double(), ulp.double())
    assert fmt.ulp(torch.tensor([1.0])).item() == 2.0**-fmt.mantissa_bits


# --------------------------------------------------------------------------------------------
# The docs show the numbers the code uses
# --------------------------------------------------------------------------------------------


def test_docs_contain_the_generated_tables() -> None:
    text = DOCS.read_text()

    assert norm_table() in text
    assert softmax_table() in text
