"""Every executor kernel against coremltools' own semantics of its MIL op.

Each case builds one op with coremltools' MIL builder on constant inputs, which runs the op's
`value_inference`: coremltools' reference result. The kernel then gets that op's inputs, with
MIL's defaults for the ones left out, converted as the executor stores values, and is called as
the executor calls it (`kernel(Numerics(strict_fp16=False), **inputs)`, fp32). Where an op has
no value_inference, or a broken one, the case carries a NumPy reference written from the op's
documented definition (coremltools' op docstrings, `mil/ops/defs/`); its comment says so.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Operation
from coremltools.converters.mil.mil.ops.defs._utils import aggregated_pad
from coremltools.converters.mil.mil.types import nptype_from_builtin

from edge_conformer.mil.executor import VALUE_PRESERVING_OPS, stored_value
from edge_conformer.mil.fp16 import Numerics
from edge_conformer.mil.kernels import KERNELS

IOS16 = ct.target.iOS16  # what export.py targets
IOS17 = ct.target.iOS17
IOS18 = ct.target.iOS18
RNG = np.random.default_rng(0)
FP32_TOLERANCE = 1e-5
FP16_TOLERANCE = 2e-3  # cast to fp16: the kernel keeps float32, the executor rounds later


def floats(*shape: int, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Standard normal values times 2, or uniform in [low, high)."""
    if low is None:
        return (2 * RNG.standard_normal(shape)).astype(np.float32)
    return RNG.uniform(low, high, shape).astype(np.float32)


def ints(*shape: int, low: int = -9, high: int = 10) -> np.ndarray:
    return RNG.integers(low, high, shape).astype(np.int32)


def bools(*shape: int) -> np.ndarray:
    return RNG.integers(0, 2, shape).astype(bool)


def case(
    op_type: str,
    label: str = "",
    *,
    opset: Any = IOS16,
    reference: Callable[..., Any] | None = None,
    **inputs: Any,
) -> Any:
    """One parametrisation: an op built on `inputs`, checked against value_inference or
    `reference` (called with the kernel's inputs)."""
    name = f"{op_type}-{label}" if label else op_type
    return pytest.param(op_type, inputs, opset, reference, id=name)


# ---------------------------------------------------------------------------------------------
# NumPy references for ops whose value_inference is missing or broken


def sigmoid_reference(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def silu_reference(x: np.ndarray) -> np.ndarray:
    # silu has no value_inference; documented as x * sigmoid(x).
    return x * sigmoid_reference(x)


def normalized(x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon)


def per_channel(values: np.ndarray | None, rank: int, default: float) -> np.ndarray | float:
    """A (C,) parameter shaped to broadcast over (N, C, *spatial)."""
    return default if values is None else values.reshape((-1,) + (1,) * (rank - 2))


def batch_norm_reference(x, mean, variance, gamma, beta, epsilon):
    # batch_norm has no value_inference; documented as
    # gamma * (x - mean) / sqrt(variance + epsilon) + beta, per channel (axis 1).
    centred = x - per_channel(mean, x.ndim, 0.0)
    y = centred / np.sqrt(per_channel(variance, x.ndim, 1.0) + epsilon)
    return per_channel(gamma, x.ndim, 1.0) * y + per_channel(beta, x.ndim, 0.0)


def instance_norm_reference(x, gamma, beta, epsilon):
    # instance_norm has no value_inference; documented as per-instance, per-channel
    # standardisation over the spatial axes, then gamma * y + beta per channel.
    y = normalized(x, tuple(range(2, x.ndim)), epsilon)
    return per_channel(gamma, x.ndim, 1.0) * y + per_channel(beta, x.ndim, 0.0)


def cumsum_reference(x, axis, exclusive, reverse):
    # coremltools' value_inference fails on exclusive=True (np.zeros(shape, data)); the op is
    # documented as the (reverse: right-to-left) running sum, exclusive: without the element
    # itself, i.e. 0 first.
    x = np.flip(x, axis) if reverse else x
    sums = np.cumsum(x, axis=axis, dtype=np.float64)
    if exclusive:
        head = np.zeros_like(np.take(sums, [0], axis=axis))
        sums = np.concatenate([head, np.delete(sums, -1, axis=axis)], axis=axis)
    return np.flip(sums, axis) if reverse else sums


def interleaved_concat_reference(values, axis, interleave):
    # concat's value_inference ignores `interleave`; documented: with n equal-shaped values,
    # output[i::n] along `axis` is values[i].
    axis = axis % values[0].ndim
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    out = np.empty(shape, dtype=values[0].dtype)
    for i, value in enumerate(values):
        out[(slice(None),) * axis + (slice(i, None, len(values)),)] = value
    return out


def conv_reference(x, weight, bias, strides, pad_type, pad, dilations, groups):
    # conv has no value_inference. Definition from its docstring: cross-correlation over the
    # spatial axes, channels split into `groups`; total "same" padding from coremltools'
    # `aggregated_pad`, its odd unit after ("same") or before ("same_lower"), as coremltools'
    # conv tests check against torch.
    spatial = x.shape[2:]
    kernel = weight.shape[2:]
    if pad_type == "custom":
        widths = [(int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(len(spatial))]
    else:
        totals = aggregated_pad(pad_type, list(kernel), list(spatial), list(strides), dilations)
        first = [(t + 1) // 2 if pad_type == "same_lower" else t // 2 for t in totals]
        widths = [(f, t - f) for f, t in zip(first, totals)]
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *widths])
    out_size = [
        (padded.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
        for i in range(len(spatial))
    ]
    in_group, out_group = x.shape[1] // groups, weight.shape[0] // groups
    out = np.zeros((x.shape[0], weight.shape[0], *out_size))
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = padded[
            (slice(None), slice(None))
            + tuple(
                slice(t * d, t * d + (n - 1) * s + 1, s)
                for t, d, s, n in zip(tap, dilations, strides, out_size)
            )
        ]
        for g in range(groups):
            outputs = slice(g * out_group, (g + 1) * out_group)
            inputs = window[:, g * in_group : (g + 1) * in_group]
            taps = weight[(outputs, slice(None)) + tap]
            out[:, outputs] += np.einsum("nc...,oc->no...", inputs, taps)
    return out if bias is None else out + per_channel(bias, x.ndim, 0.0)


# ---------------------------------------------------------------------------------------------
# The cases


FLOAT_UNARY_DOMAINS: dict[str, tuple[float, float] | None] = {
    "abs": None, "acos": (-0.95, 0.95), "asin": (-0.95, 0.95), "atan": None,
    "atanh": (-0.95, 0.95), "ceil": None, "cos": None, "cosh": None, "erf": None, "exp": None,
    "exp2": None, "floor": None, "identity": None, "relu": None, "relu6": (-8.0, 8.0),
    "sigmoid": None, "sign": None, "sin": None, "sinh": None, "softplus": None,
    "softsign": None, "sqrt": (0.0, 5.0), "square": None, "tan": (-1.4, 1.4), "tanh": None,
}
INT_UNARY = ("abs", "exp2", "identity", "sign", "square")  # the unary ops MIL allows on int32
ARITHMETIC = ("add", "sub", "mul", "real_div", "floor_div", "mod", "maximum", "minimum", "pow")
COMPARISONS = ("equal", "not_equal", "greater", "greater_equal", "less", "less_equal")
LOGICAL = ("logical_and", "logical_or", "logical_xor")
SUM_REDUCTIONS = (
    "reduce_sum", "reduce_mean", "reduce_sum_square", "reduce_l1_norm", "reduce_l2_norm",
    "reduce_log_sum_exp", "reduce_max", "reduce_min",
)
REDUCTION_AXES = ([1], [-1, 0], None)


def unary_cases() -> list[Any]:
    cases = []
    for op_type, domain in FLOAT_UNARY_DOMAINS.items():
        low, high = domain or (None, None)
        cases.append(case(op_type, "fp32", x=floats(2, 3, 4, low=low, high=high)))
    cases += [case(op_type, "int32", x=ints(3, 4, low=-4, high=5)) for op_type in INT_UNARY]
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6], dtype=np.float32)
    cases.append(case("round", "halves", x=halves))
    cases.append(case("logical_not", x=bools(2, 5)))
    cases.append(case("silu", x=floats(2, 3, 4), reference=silu_reference))
    for op_type in ("inverse", "log", "rsqrt"):
        cases.append(case(op_type, "default-epsilon", x=floats(3, 4, low=0.1, high=4.0)))
        cases.append(case(op_type, "epsilon", x=floats(3, 4, low=0.1, high=4.0), epsilon=0.5))
    return cases


def activation_cases() -> list[Any]:
    x = floats(2, 3, 5)
    cases = [
        case("clip", x=x, alpha=-0.5, beta=0.7),
        case("threshold", x=x, alpha=0.3),
        case("thresholded_relu", x=x, alpha=-0.2),
        case("leaky_relu", x=x, alpha=0.2),
        case("elu", x=x, alpha=0.4),
        # Rank 3 (and 5) only with one alpha for every channel, coremltools says.
        case("prelu", "rank3", x=x, alpha=np.full(3, 0.3, dtype=np.float32)),
        case("prelu", "rank4", x=floats(2, 4, 3, 2), alpha=floats(4, low=0.0, high=0.5)),
        case("linear_activation", x=x, alpha=-1.5, beta=0.25),
        case("scaled_tanh", x=x, alpha=1.7, beta=0.6),
        case("sigmoid_hard", x=x, alpha=0.3, beta=0.4),
        case("softmax", "last", x=floats(2, 3, 5), axis=-1),
        case("softmax", "channels", x=floats(2, 3, 5), axis=1),
    ]
    for mode in ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"):
        cases.append(case("gelu", mode.lower(), x=x, mode=mode))
    return cases


def cast_cases() -> list[Any]:
    fractions = np.array([-2.7, -0.5, 0.0, 0.4, 1.5, 3.9], dtype=np.float32)
    cases = [
        case("cast", "fp32-int32", x=fractions, dtype="int32"),
        case("cast", "fp32-bool", x=fractions, dtype="bool"),
        case("cast", "fp32-fp16", x=floats(3, 4), dtype="fp16"),
        case("cast", "int32-fp32", x=ints(3, 4), dtype="fp32"),
        case("cast", "int32-fp16", x=ints(3, 4), dtype="fp16"),
        case("cast", "bool-int32", x=bools(5), dtype="int32"),
        case("cast", "bool-fp32", x=bools(5), dtype="fp32"),
    ]
    for dtype in ("int8", "uint8", "int16", "uint16"):
        cases.append(case("cast", f"int32-{dtype}", opset=IOS17, x=ints(6, low=0), dtype=dtype))
    return cases


def binary_cases() -> list[Any]:
    # Small integers as floats: comparisons meet ties, divisions exact and inexact quotients.
    x, y = ints(2, 3, 4).astype(np.float32), ints(3, 1, low=1).astype(np.float32)
    signed_y = np.array([[-3], [2], [-1]], dtype=np.float32)
    cases = []
    for op_type in ARITHMETIC + COMPARISONS:
        if op_type == "pow":
            cases.append(case(op_type, "fp32", x=floats(2, 3, 4, low=0.1, high=3.0), y=y / 4))
        else:
            cases.append(case(op_type, "fp32-broadcast", x=x, y=y))
        if op_type in ("real_div", "floor_div", "mod"):
            cases.append(case(op_type, "fp32-negative-divisor", x=x, y=signed_y))
        # No negative exponents: integers have no negative powers.
        int_y = ints(3, 1, low=0, high=4) if op_type == "pow" else ints(3, 1, low=1)
        cases.append(case(op_type, "int32", x=ints(2, 3, 4), y=int_y))
    for op_type in ("real_div", "floor_div", "mod"):
        cases.append(case(op_type, "int32-negative-divisor", x=ints(2, 3, 4), y=-ints(3, 1, low=1)))
    for op_type in LOGICAL:
        cases.append(case(op_type, x=bools(2, 3, 4), y=bools(3, 1)))
    return cases


def reduction_cases() -> list[Any]:
    x = floats(2, 3, 4)
    cases = []
    for op_type, axes, keep_dims in itertools.product(
        SUM_REDUCTIONS, REDUCTION_AXES, (True, False)
    ):
        label = f"axes{axes}-keep{keep_dims}".replace(" ", "")
        cases.append(case(op_type, label, x=x, axes=axes, keep_dims=keep_dims))
    positive, near_one = floats(2, 3, 4, low=0.1, high=3.0), floats(2, 3, 4, low=0.8, high=1.2)
    for axes in REDUCTION_AXES:
        cases.append(case("reduce_log_sum", f"axes{axes}", x=positive, axes=axes))
        cases.append(case("reduce_prod", f"axes{axes}", x=near_one, axes=axes))
    # On int32 MIL reductions return int32, fractions truncated (mean, norms, logs).
    for op_type in SUM_REDUCTIONS + ("reduce_prod",):
        cases.append(case(op_type, "int32", x=ints(2, 3, 4, low=-3, high=4), axes=[1]))
    cases.append(case("reduce_log_sum", "int32", x=ints(2, 3, 4, low=1, high=9), axes=[1]))
    for op_type, axis, keep_dims in itertools.product(
        ("reduce_argmax", "reduce_argmin"), (1, -1), (True, False)
    ):
        label = f"axis{axis}-keep{keep_dims}"
        cases.append(case(op_type, label, x=x, axis=axis, keep_dims=keep_dims))
    for op_type in ("reduce_argmax", "reduce_argmin"):
        cases.append(case(op_type, "uint16", opset=IOS17, x=x, axis=0, output_dtype="uint16"))
    return cases


def normalization_cases() -> list[Any]:
    x = floats(2, 3, 4, 5)
    gamma_c, beta_c = floats(3, low=0.5, high=1.5), floats(3)
    return [
        case("layer_norm", "last", x=x, axes=[-1], gamma=floats(5), beta=floats(5)),
        case("layer_norm", "two-axes", x=x, axes=[1, 3], gamma=floats(3, 5), beta=floats(3, 5)),
        case("layer_norm", "no-affine", x=x, axes=[1], epsilon=1e-2),
        case("l2_norm", "rank3", x=floats(3, 4, 5)),
        case("l2_norm", "rank4", x=x, epsilon=1e-3),
        case("instance_norm", x=x, gamma=gamma_c, beta=beta_c, reference=instance_norm_reference),
        case("instance_norm", "no-affine", x=x, epsilon=1e-2, reference=instance_norm_reference),
        case(
            "batch_norm", x=x, mean=floats(3), variance=floats(3, low=0.5, high=2.0),
            gamma=gamma_c, beta=beta_c, epsilon=1e-3, reference=batch_norm_reference,
        ),
        case(
            "batch_norm", "rank3-no-affine", x=floats(2, 3, 6), mean=floats(3),
            variance=floats(3, low=0.5, high=2.0), reference=batch_norm_reference,
        ),
    ]


def linear_algebra_cases() -> list[Any]:
    query, key, value = floats(2, 3, 5, 8), floats(2, 3, 6, 8), floats(2, 3, 6, 4)
    return [
        case("linear", x=floats(3, 5), weight=floats(4, 5), bias=floats(4)),
        case("linear", "rank3-no-bias", x=floats(2, 3, 5), weight=floats(4, 5)),
        case("matmul", x=floats(3, 5), y=floats(5, 4)),
        case("matmul", "batched-broadcast", x=floats(2, 1, 3, 5), y=floats(4, 5, 2)),
        case(
            "matmul", "transposed", x=floats(2, 5, 3), y=floats(2, 4, 5),
            transpose_x=True, transpose_y=True,
        ),
        case("matmul", "vector", x=floats(5), y=floats(2, 5, 3)),
        # The exported attention's einsums, as the torch frontend rewrites them (operands
        # swapped into MIL's "nchw,nwhu->nchu" form).
        case("einsum", "scores", values=(floats(1, 6, 2, 8), floats(1, 8, 2, 5)),
             equation="bkhc,bchq->bkhq"),
        case("einsum", "context", values=(floats(1, 8, 2, 6), floats(1, 6, 2, 5)),
             equation="bchk,bkhq->bchq"),
        case("einsum", "rank3", values=(floats(3, 4, 5), floats(5, 4, 2)), equation="chw,whr->chr"),
        case("scaled_dot_product_attention", opset=IOS18, query=query, key=key, value=value),
        case(
            "scaled_dot_product_attention", "bool-mask", opset=IOS18,
            query=query, key=key, value=value, attn_mask=bools(5, 6) | np.eye(5, 6, dtype=bool),
        ),
        case(
            "scaled_dot_product_attention", "float-mask", opset=IOS18,
            query=query, key=key, value=value, attn_mask=floats(1, 3, 5, 6),
        ),
    ]


def conv_cases() -> list[Any]:
    x1, x2, x3 = floats(2, 4, 11), floats(1, 4, 9, 10), floats(1, 2, 5, 6, 4)
    conv = functools.partial(case, "conv", reference=conv_reference)
    return [
        conv("1d-valid", x=x1, weight=floats(6, 4, 3), pad_type="valid"),
        conv("1d-custom-stride", x=x1, weight=floats(6, 4, 4), bias=floats(6),
             pad_type="custom", pad=[2, 1], strides=[2]),
        conv("2d-same-stride-even-kernel", x=x2, weight=floats(8, 2, 4, 4),
             pad_type="same", strides=[2, 2], groups=2),
        conv("2d-same-lower", x=x2, weight=floats(4, 4, 2, 3), pad_type="same_lower"),
        conv("2d-dilated", x=x2, weight=floats(4, 4, 3, 3), bias=floats(4),
             pad_type="custom", pad=[2, 2, 1, 0], dilations=[2, 1]),
        conv("2d-depthwise", x=x2, weight=floats(4, 1, 1, 5), pad_type="custom",
             pad=[0, 0, 2, 2], groups=4),
        conv("3d-same", x=x3, weight=floats(3, 2, 2, 3, 1), pad_type="same"),
    ]


def layout_cases() -> list[Any]:
    x = floats(2, 3, 4)
    return [
        case("reshape", "minus-one", x=x, shape=[4, -1]),
        case("reshape", "zero-same-rank", x=x, shape=[0, 2, 6]),
        case("reshape", "zero-same-rank-ios17", opset=IOS17, x=x, shape=[0, 2, 6]),
        case("reshape", "zero-other-rank", opset=IOS17, x=floats(2, 50), shape=[1, 0, -1, 0]),
        case("reshape", "int32", x=ints(2, 6), shape=[3, 4]),
        case("transpose", x=x, perm=[2, 0, 1]),
        case("expand_dims", "front", x=x, axes=[0]),
        case("expand_dims", "negative-several", x=x, axes=[-1, 1]),
        case("squeeze", "all", x=floats(1, 3, 1, 2)),
        case("squeeze", "some", x=floats(1, 3, 1, 2), axes=[-2]),
        case("reverse", "one-axis", x=x, axes=[1]),
        case("reverse", "all", x=x),
        # Only a size-1 axis flipped: a negative stride NumPy calls contiguous, torch refuses.
        case("reverse", "size-one-axis", x=floats(1, 4), axes=[0]),
        case("reverse", "int32", x=ints(3, 4), axes=[-1]),
        case("concat", values=(x, floats(2, 3, 2), ints(2, 3, 1).astype(np.float32)), axis=-1),
        case("concat", "int32-axis0", values=(ints(1, 3), ints(2, 3)), axis=0),
        case("concat", "interleave", values=(x, floats(2, 3, 4), floats(2, 3, 4)), axis=1,
             interleave=True, reference=interleaved_concat_reference),
        case("concat", "bool", values=(bools(2, 2), bools(2, 1)), axis=1),
        case("stack", values=(x, floats(2, 3, 4)), axis=0),
        case("stack", "last", values=(ints(3, 2), ints(3, 2)), axis=-1),
        case("split", "num-splits", x=floats(2, 6, 3), axis=1, num_splits=3),
        case("split", "sizes", x=floats(2, 6, 3), axis=-2, split_sizes=[1, 4, 1]),
        case("split", "int32", x=ints(4, 2), axis=0, num_splits=2),
        case("tile", x=x, reps=[2, 1, 3]),
        case("tile", "int32", x=ints(2, 3), reps=[1, 2]),
    ]


def slicing_cases() -> list[Any]:
    x = floats(4, 5, 6)
    cache = floats(1, 8, 1, 10)  # a (B, C, 1, S) cache: slices keep the size-1 axes
    return [
        case("slice_by_index", "plain", x=x, begin=[1, 0, 2], end=[3, 5, 6]),
        case("slice_by_index", "strides", x=x, begin=[0, 1, 0], end=[4, 5, 6], stride=[2, 2, 3]),
        case("slice_by_index", "negative-stride", x=x, begin=[3, 4, 5], end=[0, 0, 0],
             stride=[-1, -2, -1], end_mask=[False, False, True]),
        case("slice_by_index", "negative-stride-size-one", x=cache, begin=[0, 0, 0, 0],
             end=[1, 8, 1, 10], stride=[-1, 1, -1, 1], begin_mask=[True] * 4,
             end_mask=[True] * 4),
        case("slice_by_index", "masks", x=x, begin=[2, 0, 1], end=[0, 3, 0],
             begin_mask=[True, False, False], end_mask=[False, False, True]),
        case("slice_by_index", "negative-begin", x=x, begin=[-2, -4, 0], end=[4, -1, 6]),
        case("slice_by_index", "squeeze", x=x, begin=[1, -1, 0], end=[2, 5, 6],
             squeeze_mask=[True, True, False]),
        case("slice_by_index", "squeeze-with-begin-mask", x=x, begin=[2, 3, 0], end=[0, 5, 6],
             begin_mask=[True, False, False], squeeze_mask=[True, False, False]),
        case("slice_by_index", "int32", x=ints(4, 5), begin=[1, 0], end=[4, 5], stride=[1, 2]),
        case("slice_by_index", "cache-window", x=cache, begin=[0, 0, 0, 4], end=[1, 8, 1, 10],
             begin_mask=[True, True, True, False], end_mask=[True, True, True, True]),
        case("slice_by_size", "plain", x=x, begin=[1, 0, 2], size=[2, 5, 3]),
        case("slice_by_size", "to-the-end", x=x, begin=[1, 2, 0], size=[-1, -1, 6]),
        case("slice_by_size", "negative-begin-reaching-the-end", x=x, begin=[-2, -3, 0],
             size=[2, 3, 6]),
        case("slice_by_size", "negative-begin", x=cache, begin=[0, -6, 0, -4], size=[1, 2, 1, -1]),
        case("slice_by_size", "int32", x=ints(4, 5), begin=[-3, 1], size=[2, -1]),
    ]


def tensor_operation_cases() -> list[Any]:
    x = floats(2, 3, 4)
    square = floats(2, 5, 5)
    with_inf = floats(2, 5)
    with_inf[0, 2] = np.inf
    cases = [
        case("pad", "constant", x=x, pad=[1, 2], mode="constant", constant_val=-1.5),
        case("pad", "constant-two-axes", x=x, pad=[0, 1, 2, 0], mode="constant"),
        case("pad", "reflect", x=x, pad=[1, 2, 2, 1], mode="reflect"),
        case("pad", "replicate", x=x, pad=[2, 1], mode="replicate"),
        case("select", cond=bools(3, 4), a=x, b=floats(3, 4)),
        case("select", "broadcast-cond", cond=bools(1, 4), a=x, b=floats(2, 1, 4)),
        case("select", "int32", cond=bools(3, 1), a=ints(3, 4), b=ints(4)),
        case("band_part", "lower", x=square, lower=1, upper=0),
        case("band_part", "upper", x=square, lower=0, upper=2),
        case("band_part", "unbounded", x=square, lower=-1, upper=1),
        case("band_part", "default", x=square),
        case("fill", shape=[2, 3], value=1.5),
        case("fill", "default", shape=[4]),
        case("fill", "int32", shape=[2, 2], value=np.int32(7)),
        case("fill_like", ref_tensor=x, value=0.25),
        case("fill_like", "int32-ref", ref_tensor=ints(2, 3), value=np.int32(-2)),
        case("shape", x=x),
        case("range_1d", "fp32", start=0.5, end=3.0, step=0.75),
        case("range_1d", "int32", start=np.int32(-3), end=np.int32(8), step=np.int32(3)),
        case("range_1d", "negative-step", start=np.int32(5), end=np.int32(-1), step=np.int32(-2)),
    ]
    for axis, exclusive, reverse in itertools.product((0, -1), (False, True), (False, True)):
        label = f"axis{axis}-exclusive{exclusive}-reverse{reverse}"
        reference = cumsum_reference if exclusive else None
        cases.append(case("cumsum", label, x=x, axis=axis, exclusive=exclusive,
                          reverse=reverse, reference=reference))
    cases.append(
        case("cumsum", "inf", x=with_inf, axis=1, exclusive=True, reference=cumsum_reference)
    )
    return cases


def gather_cases() -> list[Any]:
    x = floats(3, 4, 5)
    return [
        case("gather", "vector-indices", x=x, indices=np.int32([2, 0, 2]), axis=1),
        case("gather", "matrix-indices", x=x, indices=ints(2, 2, low=0, high=3), axis=0),
        case("gather", "scalar-index", x=x, indices=np.int32(3), axis=-1),
        case("gather", "negative-indices", opset=IOS17, x=x, indices=np.int32([-1, 0, -4]),
             axis=1),
        case("gather", "batch-dims-1", x=x, indices=ints(3, 2, low=0, high=4), axis=1,
             batch_dims=1),
        case("gather", "batch-dims-2", x=x, indices=ints(3, 4, 2, low=0, high=5), axis=2,
             batch_dims=2),
        case("gather", "batch-dims-axis-after", x=x, indices=ints(3, 6, low=0, high=5), axis=2,
             batch_dims=1),
        case("gather", "int32", x=ints(4, 3), indices=np.int32([3, 1]), axis=0),
        case("gather_along_axis", x=x, indices=ints(3, 2, 5, low=0, high=4), axis=1),
        case("gather_along_axis", "last", x=x, indices=ints(3, 4, 2, low=0, high=5), axis=-1),
    ]


def packed_indices(count: int, nbits: int) -> np.ndarray:
    """Random `nbits`-bit indices for `count` elements, packed as constexpr_lut_to_dense reads
    them: ceil(count * nbits / 8) bytes, the unused high bits of the last byte random too."""
    return RNG.integers(0, 256, -(-count * nbits // 8)).astype(np.uint8)


def compression_cases() -> list[Any]:
    # The constexpr ops coremltools.optimize.coreml writes for an iOS16 program
    # (export.compress): per-channel int8 (symmetric: zero point 0) and per-tensor palettes of
    # 2**nbits entries, and their other admissible forms.
    weight_shape = (6, 4, 1, 3)
    cases = [
        case("constexpr_affine_dequantize", "int8-per-channel",
             quantized_data=ints(*weight_shape, low=-128, high=128).astype(np.int8),
             zero_point=np.zeros(6, dtype=np.int8), scale=floats(6, low=0.01, high=0.1)
             .astype(np.float16), axis=0),
        case("constexpr_affine_dequantize", "uint8-scalars-fp32",
             quantized_data=ints(3, 5, low=0, high=256).astype(np.uint8),
             zero_point=np.uint8(128), scale=np.float32(0.05), axis=1),
        case("constexpr_affine_dequantize", "int8-negative-axis-fp32-zero-point",
             quantized_data=ints(2, 3, 5, low=-128, high=128).astype(np.int8),
             zero_point=floats(5, low=-3.0, high=3.0), scale=floats(5, low=0.01, high=0.1),
             axis=-1),
    ]
    # 90 six-bit fields end mid-byte; 7 one-bit fields leave most of their byte unused.
    for nbits, shape, lut_type in ((8, weight_shape, np.float16), (6, (5, 18), np.float16),
                                   (4, (3, 7), np.float32), (2, (2, 3, 5), np.float16),
                                   (1, (7,), np.float16)):
        count = int(np.prod(shape))
        cases.append(case("constexpr_lut_to_dense", f"{nbits}bit",
                          indices=packed_indices(count, nbits),
                          lut=floats(2**nbits).astype(lut_type),
                          shape=np.array(shape, dtype=np.uint32)))
    cases.append(case("constexpr_lut_to_dense", "int8-lut", indices=packed_indices(12, 4),
                      lut=ints(16, low=-128, high=128).astype(np.int8),
                      shape=np.array([3, 4], dtype=np.uint32)))
    return cases


CASES = (
    unary_cases() + activation_cases() + cast_cases() + binary_cases() + reduction_cases()
    + normalization_cases() + linear_algebra_cases() + conv_cases() + layout_cases()
    + slicing_cases() + tensor_operation_cases() + gather_cases() + compression_cases()
)


# ---------------------------------------------------------------------------------------------
# Building the op and calling the kernel as the executor does


def build_op(op_type: str, inputs: dict[str, Any], opset: Any, runtime_x: bool) -> Operation:
    """The MIL op on constant `inputs`, whose outputs then hold value_inference's results;
    with `runtime_x`, x is a function input instead and nothing is inferred (for the ops whose
    value_inference is missing or fails)."""
    placeholders = {"x": mb.placeholder(shape=inputs["x"].shape)} if runtime_x else {}
    with Function(placeholders, opset_version=opset) as function:
        outputs = getattr(mb, op_type)(**{**inputs, **function.inputs})
    return (outputs[0] if isinstance(outputs, (tuple, list)) else outputs).op


def kernel_inputs(op: Operation, inputs: dict[str, Any]) -> dict[str, Any]:
    """The op's inputs (`inputs` for function inputs), MIL defaults for the optional ones left
    out, all stored as the executor stores them in fp32 mode."""
    arguments: dict[str, Any] = {}
    for name, binding in op.inputs.items():
        if isinstance(binding, (tuple, list)):
            arguments[name] = tuple(stored_value(var.val, False) for var in binding)
        else:
            value = inputs[name] if binding.val is None else binding.val
            arguments[name] = stored_value(value, False)
    for name, value in op.default_inputs().items():
        arguments.setdefault(name, stored_value(value, False))
    return arguments


def coremltools_values(op: Operation) -> tuple[Any, ...]:
    """coremltools' result of the op on its constant inputs. A constexpr op is never folded
    (value_inference leaves it to Core ML, which decompresses at load or run time): its values
    are what `materialized_val_inference` decompresses, coremltools' own reading of the op."""
    if op.op_type.startswith("constexpr_"):
        return as_tuple(op.materialized_val_inference())
    return tuple(var.val for var in op.outputs)


def as_tuple(values: Any) -> tuple[Any, ...]:
    return tuple(values) if isinstance(values, (tuple, list)) else (values,)


def assert_same_values(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    if expected.dtype.kind == "f":
        assert got.dtype.kind == "f"
        tolerance = FP16_TOLERANCE if expected.dtype == np.float16 else FP32_TOLERANCE
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
    else:  # integers and bools: same type, same values
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("op_type", "inputs", "opset", "reference"), CASES)
def test_kernel_matches_coremltools(op_type, inputs, opset, reference) -> None:
    # A reference stands in for a missing or failing value_inference: keep it from running.
    op = build_op(op_type, inputs, opset, runtime_x=reference is not None and "x" in inputs)
    arguments = kernel_inputs(op, inputs)
    with np.errstate(all="ignore"):  # the executor's setting: inf and NaN are results here
        outputs = as_tuple(KERNELS[op_type](Numerics(strict_fp16=False), **arguments))
        if reference is None:
            expected = coremltools_values(op)
            assert all(value is not None for value in expected), "no value_inference result"
        else:
            expected = as_tuple(reference(**arguments))
    assert len(outputs) == len(op.outputs)
    for got, want, var in zip(outputs, expected, op.outputs, strict=True):
        got = np.asarray(got)
        # As the MIL type of the output: a float64 reference compares as fp32 or fp16.
        assert_same_values(got, np.asarray(want).astype(nptype_from_builtin(var.dtype)))
        # The fp16 modes store every output rounded to FP16, through torch: that must work.
        assert np.shape(stored_value(got, rounds_to_fp16=True)) == got.shape


@pytest.mark.parametrize(
    ("op_type", "inputs", "opset", "reference"),
    [case for case in CASES if case.values[0] in VALUE_PRESERVING_OPS],
)
def test_value_preserving_kernels_keep_fp16_values(op_type, inputs, opset, reference) -> None:
    """The fp16 modes skip rounding these ops' outputs, and counting their non-finite values
    when no input holds any: on FP16 inputs, each must give FP16 values, finite ones if the
    inputs are finite."""
    op = build_op(op_type, inputs, opset, runtime_x=reference is not None and "x" in inputs)

    def as_fp16(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(stored_value(item, True) for item in value)
        return stored_value(value, True)

    arguments = {name: as_fp16(value) for name, value in kernel_inputs(op, inputs).items()}
    leaves = [item for value in arguments.values() for item in as_tuple(value)]
    floats_in = [item for item in leaves if isinstance(item, np.ndarray) and item.dtype.kind == "f"]
    with np.errstate(all="ignore"):
        outputs = as_tuple(KERNELS[op_type](Numerics(strict_fp16=False), **arguments))
    for got in map(np.asarray, outputs):
        if got.dtype.kind != "f":
            continue
        assert got.dtype == np.float32
        assert got.tobytes() == stored_value(got, True).tobytes()
        if all(np.isfinite(value).all() for value in floats_in):
            assert np.isfinite(got).all()


def test_every_value_preserving_op_is_checked() -> None:
    assert VALUE_PRESERVING_OPS <= {case.values[0] for case in CASES}


# ---------------------------------------------------------------------------------------------
# Regression: MIL programs store reduce ops' keep_dims as NumPy bools, which NumPy rejects


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(
    "op_type",
    ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_sum_square",
     "reduce_l2_norm"],
)
def test_reductions_take_numpy_bool_keep_dims(op_type: str, strict: bool) -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    kernel = KERNELS[op_type]
    kept = kernel(Numerics(strict_fp16=strict), x, axes=[1], keep_dims=np.bool_(True))
    dropped = kernel(Numerics(strict_fp16=strict), x, axes=[1], keep_dims=np.bool_(False))
    assert kept.shape == (2, 1, 2) and dropped.shape == (2, 2)


def test_arg_reductions_take_numpy_bool_keep_dims() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    kernel = KERNELS["reduce_argmax"]
    indices = kernel(Numerics(strict_fp16=False), x, axis=1, keep_dims=np.bool_(True))
    assert indices.shape == (2, 1) and indices.ravel().tolist() == [2, 2]


def test_every_kernel_is_checked() -> None:
    assert {param.values[0] for param in CASES} == set(KERNELS)
