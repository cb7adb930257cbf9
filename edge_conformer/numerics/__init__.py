"""Numerics for FP16 / BF16 inference: stable Lp layer normalisation and softmax.

The theory, with proofs, is in ``docs/numerics.md``; every constant used here comes from it.
"""

from edge_conformer.numerics.error_bounds import (
    NormConditions,
    lp_norm_conditions,
    lp_norm_error_bound,
    lp_norm_error_bound_from_conditions,
    lp_norm_reference,
    mean_error_coefficient,
    post_centring_rounding,
)
from edge_conformer.numerics.formats import (
    BF16,
    FORMATS,
    FP16,
    FP32,
    FloatFormat,
    accumulate_sum,
    get_format,
    round_to_format,
)
from edge_conformer.numerics.prenorm import (
    PRENORMALIZERS,
    NormEmulation,
    augmented_sum_range,
    computed_sum_range,
    emulate_layer_norm,
    epsilon_floor,
    feasible_constant_range,
    guaranteed_sum_range,
    prenormalizer_constant,
    range_reduction_floor,
    safety_margins,
    stable_layer_norm,
    stable_mad_norm,
)
from edge_conformer.numerics.softmax import (
    SoftmaxEmulation,
    conditional_rescaled_softmax,
    emulate_softmax,
    lut_domain,
    softmax_sum_error_bound,
    softmax_threshold,
)

__all__ = [
    "BF16",
    "FORMATS",
    "FP16",
    "FP32",
    "PRENORMALIZERS",
    "FloatFormat",
    "NormConditions",
    "NormEmulation",
    "SoftmaxEmulation",
    "accumulate_sum",
    "augmented_sum_range",
    "computed_sum_range",
    "conditional_rescaled_softmax",
    "emulate_layer_norm",
    "emulate_softmax",
    "epsilon_floor",
    "feasible_constant_range",
    "get_format",
    "guaranteed_sum_range",
    "lp_norm_conditions",
    "lp_norm_error_bound",
    "lp_norm_error_bound_from_conditions",
    "lp_norm_reference",
    "lut_domain",
    "mean_error_coefficient",
    "post_centring_rounding",
    "prenormalizer_constant",
    "range_reduction_floor",
    "round_to_format",
    "safety_margins",
    "softmax_sum_error_bound",
    "softmax_threshold",
    "stable_layer_norm",
    "stable_mad_norm",
]
