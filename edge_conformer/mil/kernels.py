"""NumPy kernels for MIL ops, registered by op type for the package executor.

A kernel is called as `kernel(num, **inputs)`: `num` is the `Numerics` of the run, and the
keyword arguments are the op's MIL inputs by their MIL names (coremltools' op definitions,
`coremltools/converters/mil/mil/ops/defs/iOS15..iOS18`), with MIL's defaults filled in for
optional inputs the program leaves out. Tensors arrive as float32, integer or bool arrays;
parameters (axes, pad_type, ...) as stored in the program. A kernel computes in float32 and
returns an array (or a tuple, for multi-output ops); the executor rounds the result to FP16.

Adding an op is one function decorated with `@register("op_type")`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_conformer.mil.fp16 import Numerics, normalize_axes

Kernel = Callable[..., Any]
KERNELS: dict[str, Kernel] = {}


def register(*op_types: str) -> Callable[[Kernel], Kernel]:
    def add(kernel: Kernel) -> Kernel:
        for op_type in op_types:
            KERNELS[op_type] = kernel
        return kernel

    return add


def _int_tuple(values: Sequence[int] | None) -> tuple[int, ...] | None:
    """Axes, a permutation, a shape...: as a tuple of Python ints (None stays None)."""
    return None if values is None else tuple(int(value) for value in values)


def _as_torch(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x: np.ndarray) -> np.ndarray:
    return torch.special.erf(_as_torch(x)).numpy()


def _without_negative_strides(view: np.ndarray) -> np.ndarray:
    """A copy of a flipped view. Every torch call (FP16 rounding included) rejects negative
    strides, and np.ascontiguousarray keeps them on size-1 axes (NumPy calls those contiguous)."""
    return view.copy() if any(stride < 0 for stride in view.strides) else view


def _keeping_integer_type(result: Any, *operands: np.ndarray) -> Any:
    """On int32 operands MIL arithmetic returns int32: a fractional result (real_div, exp2 of a
    negative, reduce_mean, ...) truncated toward zero, as coremltools' value_inference casts
    it, and NumPy's int64 sums narrowed back. Bool results (comparisons) stay bool."""
    result = np.asarray(result)
    if result.dtype.kind not in "fiu":
        return result
    for x in operands:  # a loop rather than all(...): this runs on every elementwise op
        if np.asarray(x).dtype.kind not in "iu":
            return result
    exact = np.trunc(result) if result.dtype.kind == "f" else result
    return exact.astype(np.result_type(*operands), copy=False)


def _integer_in_integer_out(kernel: Kernel) -> Kernel:
    """A kernel of `x` whose result keeps x's integer type (see `_keeping_integer_type`)."""

    @functools.wraps(kernel)
    def typed(num: Numerics, x: np.ndarray, *args: Any, **params: Any) -> Any:
        return _keeping_integer_type(kernel(num, x, *args, **params), x)

    return typed


# ---------------------------------------------------------------------------------------------
# Elementwise ops without parameters


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "ceil": np.ceil,
    "cos": np.cos,
    "cosh": np.cosh,
    "erf": _erf,
    "exp": np.exp,
    "exp2": np.exp2,
    "floor": np.floor,
    "identity": lambda x: x,
    "logical_not": np.logical_not,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "round": np.round,
    "sigmoid": _sigmoid,
    "sign": np.sign,
    "silu": lambda x: x * _sigmoid(x),
    "sin": np.sin,
    "sinh": np.sinh,
    "softplus": lambda x: np.logaddexp(0, x),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
}

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "equal": np.equal,
    "floor_div": np.floor_divide,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "mod": np.mod,
    "mul": np.multiply,
    "not_equal": np.not_equal,
    "pow": np.power,
    "real_div": np.true_divide,
    "sub": np.subtract,
}


def _unary_kernel(function: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    def kernel(num: Numerics, x: np.ndarray) -> np.ndarray:
        return _keeping_integer_type(function(x), x)

    return kernel


def _binary_kernel(function: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    def kernel(num: Numerics, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _keeping_integer_type(function(x, y), x, y)

    return kernel


KERNELS.update({op_type: _unary_kernel(f) for op_type, f in _UNARY.items()})
KERNELS.update({op_type: _binary_kernel(f) for op_type, f in _BINARY.items()})

# Ops computed element by element (operands broadcast from a leading 1, parameters per
# channel at most): the rows of a batched call (executor.py) stay apart in them.
ELEMENTWISE_OP_TYPES = frozenset(_UNARY) | frozenset(_BINARY) | {
    "inverse", "rsqrt", "log", "clip", "threshold", "thresholded_relu", "leaky_relu", "elu",
    "prelu", "linear_activation", "scaled_tanh", "sigmoid_hard", "gelu", "cast", "select",
    "fill_like", "batch_norm",
}


# ---------------------------------------------------------------------------------------------
# Elementwise ops with parameters


@register("inverse")
def inverse(num: Numerics, x: np.ndarray, epsilon: float) -> np.ndarray:
    return 1.0 / (x + epsilon)


@register("rsqrt")
def rsqrt(num: Numerics, x: np.ndarray, epsilon: float) -> np.ndarray:
    return 1.0 / np.sqrt(x + epsilon)


@register("log")
def log(num: Numerics, x: np.ndarray, epsilon: float) -> np.ndarray:
    return np.log(x + epsilon)


@register("clip")
def clip(num: Numerics, x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.minimum(np.maximum(x, alpha), beta)


@register("threshold")
def threshold(num: Numerics, x: np.ndarray, alpha: float) -> np.ndarray:
    return np.maximum(x, alpha)


@register("thresholded_relu")
def thresholded_relu(num: Numerics, x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x >= alpha, x, 0)


@register("leaky_relu")
def leaky_relu(num: Numerics, x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x >= 0, x, alpha * x)


@register("elu")
def elu(num: Numerics, x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


@register("prelu")
def prelu(num: Numerics, x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    per_channel = alpha.reshape((-1,) + (1,) * (x.ndim - 2))  # x is (B, C, *spatial)
    return np.where(x > 0, x, per_channel * x)


@register("linear_activation")
def linear_activation(num: Numerics, x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return alpha * x + beta


@register("scaled_tanh")
def scaled_tanh(num: Numerics, x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return alpha * np.tanh(beta * x)


@register("sigmoid_hard")
def sigmoid_hard(num: Numerics, x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(alpha * x + beta, 0, 1)


@register("gelu")
def gelu(num: Numerics, x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "EXACT":
        return 0.5 * x * (1 + _erf(x / np.sqrt(np.float32(2))))
    if mode == "TANH_APPROXIMATION":
        inner = np.sqrt(np.float32(2 / np.pi)) * (x + np.float32(0.044715) * x**3)
        return 0.5 * x * (1 + np.tanh(inner))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(np.float32(1.702) * x)
    raise ValueError(f"unknown gelu mode {mode!r}")


# Every float type is float32 inside the executor: FP16 is a rounding the executor applies to
# op outputs, not a storage type, so that fp32 mode can run an FP16 program unrounded.
_CAST_DTYPES = {
    "fp16": np.float32,
    "fp32": np.float32,
    "fp64": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int32,
    "bool": np.bool_,
}


@register("cast")
def cast(num: Numerics, x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(_CAST_DTYPES[dtype])


# ---------------------------------------------------------------------------------------------
# Reductions: the sums go through `num`, so fp16-strict accumulates them in FP16


@register("reduce_sum")
@_integer_in_integer_out
def reduce_sum(
    num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
) -> np.ndarray:
    return num.sum(x, axes, keep_dims)


@register("reduce_mean")
@_integer_in_integer_out
def reduce_mean(
    num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
) -> np.ndarray:
    return num.mean(x, axes, keep_dims)


@register("reduce_sum_square")
@_integer_in_integer_out
def reduce_sum_square(
    num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
) -> np.ndarray:
    return num.sum(x * x, axes, keep_dims)


@register("reduce_l1_norm")
@_integer_in_integer_out
def reduce_l1_norm(
    num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
) -> np.ndarray:
    return num.sum(np.abs(x), axes, keep_dims)


@register("reduce_l2_norm")
@_integer_in_integer_out
def reduce_l2_norm(
    num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
) -> np.ndarray:
    return np.sqrt(num.sum(x * x, axes, keep_dims))


@register("reduce_log_sum")
@_integer_in_integer_out
def reduce_log_sum(
    num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
) -> np.ndarray:
    return np.log(num.sum(x, axes, keep_dims))


@register("reduce_log_sum_exp")
@_integer_in_integer_out
def reduce_log_sum_exp(
    num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
) -> np.ndarray:
    axes = normalize_axes(axes, x.ndim)
    peak = np.max(x, axis=axes, keepdims=True)
    result = peak + np.log(num.sum(np.exp(x - peak), axes, keepdims=True))
    return result if keep_dims else np.squeeze(result, axes)


def _plain_reduction(function: Callable[..., np.ndarray]) -> Kernel:
    @_integer_in_integer_out
    def kernel(
        num: Numerics, x: np.ndarray, axes: Sequence[int] | None, keep_dims: bool
    ) -> np.ndarray:
        return function(x, axis=_int_tuple(axes), keepdims=bool(keep_dims))

    return kernel


KERNELS["reduce_max"] = _plain_reduction(np.max)
KERNELS["reduce_min"] = _plain_reduction(np.min)
KERNELS["reduce_prod"] = _plain_reduction(np.prod)


def _arg_reduction(function: Callable[..., np.ndarray]) -> Kernel:
    def kernel(
        num: Numerics, x: np.ndarray, axis: int, keep_dims: bool, output_dtype: str = "int32"
    ) -> np.ndarray:
        indices = function(x, axis=int(axis), keepdims=bool(keep_dims))
        return indices.astype(_CAST_DTYPES[output_dtype])

    return kernel


KERNELS["reduce_argmax"] = _arg_reduction(np.argmax)
KERNELS["reduce_argmin"] = _arg_reduction(np.argmin)


# ---------------------------------------------------------------------------------------------
# Normalisations and softmax: fused ops whose hidden statistics `num` accumulates and watches


def _broadcast_to_axes(param: np.ndarray, axes: tuple[int, ...], rank: int) -> np.ndarray:
    """Reshape a per-feature parameter over `axes` so that it broadcasts against rank `rank`."""
    shape = [1] * rank
    for axis, size in zip(sorted(axes), param.shape, strict=True):
        shape[axis] = size
    return param.reshape(shape)


def _standardize(num: Numerics, x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    """(x - mean) / sqrt(variance + epsilon) over `axes`, statistics from `num`."""
    mean = num.watch(num.mean(x, axes, keepdims=True))
    centred = x - mean
    variance = num.watch(num.mean(centred * centred, axes, keepdims=True))
    return centred / np.sqrt(variance + epsilon)


def _scale_and_shift(
    y: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, axes: tuple[int, ...]
) -> np.ndarray:
    if gamma is not None:
        y = y * _broadcast_to_axes(gamma, axes, y.ndim)
    if beta is not None:
        y = y + _broadcast_to_axes(beta, axes, y.ndim)
    return y


@register("layer_norm")
def layer_norm(
    num: Numerics,
    x: np.ndarray,
    axes: Sequence[int],
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    epsilon: float,
) -> np.ndarray:
    axes = normalize_axes(axes, x.ndim)
    return _scale_and_shift(_standardize(num, x, axes, epsilon), gamma, beta, axes)


@register("instance_norm")
def instance_norm(
    num: Numerics,
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    epsilon: float,
) -> np.ndarray:
    spatial_axes = tuple(range(2, x.ndim))  # x is (B, C, *spatial)
    y = _standardize(num, x, spatial_axes, epsilon)
    return _scale_and_shift(y, gamma, beta, axes=(1,))


@register("batch_norm")
def batch_norm(
    num: Numerics,
    x: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    epsilon: float,
) -> np.ndarray:
    # Inference batch norm: running statistics are constants, nothing is accumulated.
    channel = (1,)  # x is (B, C, *spatial)
    mean = _broadcast_to_axes(mean, channel, x.ndim)
    variance = _broadcast_to_axes(variance, channel, x.ndim)
    y = (x - mean) / np.sqrt(variance + epsilon)
    return _scale_and_shift(y, gamma, beta, channel)


@register("l2_norm")
def l2_norm(num: Numerics, x: np.ndarray, epsilon: float) -> np.ndarray:
    last_three_axes = tuple(range(x.ndim - 3, x.ndim))
    sum_of_squares = num.watch(num.sum(x * x, last_three_axes, keepdims=True))
    return x / np.sqrt(sum_of_squares + epsilon)


def _softmax(num: Numerics, x: np.ndarray, axis: int) -> np.ndarray:
    exps = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return exps / num.watch(num.sum(exps, (axis,), keepdims=True))


@register("softmax")
def softmax(num: Numerics, x: np.ndarray, axis: int) -> np.ndarray:
    return _softmax(num, x, int(axis))


@register("scaled_dot_product_attention")
def scaled_dot_product_attention(
    num: Numerics,
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    attn_mask: np.ndarray | None = None,
) -> np.ndarray:
    scores = np.matmul(query, np.swapaxes(key, -1, -2)) / np.sqrt(np.float32(query.shape[-1]))
    if attn_mask is not None:
        # A bool mask says which keys take part; a float mask is added to the scores.
        attended = attn_mask.dtype == np.bool_
        scores = np.where(attn_mask, scores, -np.inf) if attended else scores + attn_mask
    return np.matmul(_softmax(num, scores, axis=-1), value)


# ---------------------------------------------------------------------------------------------
# Linear algebra


def _row_by_row(num: Numerics, product: Callable[..., np.ndarray], *operands: np.ndarray
                ) -> np.ndarray:
    """`product` of the operands, row by row in a batched call (executor.py): torch and BLAS
    sum a product of several rows in another order than one row's. Operands with one row
    (a leading 1) are shared by every row."""
    if num.rows == 1:
        return product(*operands)
    return np.concatenate([
        product(*(operand[row : row + 1] if len(operand) > 1 else operand
                  for operand in operands))
        for row in range(num.rows)
    ])


@register("linear")
def linear(num: Numerics, x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return _row_by_row(num, lambda rows: np.matmul(rows, weight.T) + bias, x)


@register("matmul")
def matmul(
    num: Numerics, x: np.ndarray, y: np.ndarray, transpose_x: bool, transpose_y: bool
) -> np.ndarray:
    if transpose_x:
        x = np.swapaxes(x, -1, -2)
    if transpose_y:
        y = np.swapaxes(y, -1, -2)
    return _row_by_row(num, np.matmul, x, y)


@register("einsum")
def einsum(num: Numerics, values: tuple[np.ndarray, ...], equation: str) -> np.ndarray:
    # torch.einsum contracts through batched matmul; np.einsum would loop unless given a path.
    def contract(*operands: np.ndarray) -> np.ndarray:
        return torch.einsum(equation, *(_as_torch(v) for v in operands)).numpy()

    terms = equation.replace(" ", "").replace("->", ",").split(",")
    if len({term[:1] for term in terms}) == 1:  # every term leads with the batch's label
        return _row_by_row(num, contract, *values)
    return contract(*values)


_TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_padding(
    pad_type: str,
    pad: Sequence[int],
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis, as MIL's `conv` defines each pad_type."""
    if pad_type == "valid":
        return [(0, 0)] * len(input_size)
    if pad_type == "custom":
        return [(int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(len(input_size))]
    if pad_type not in ("same", "same_lower"):
        raise ValueError(f"unknown conv pad_type {pad_type!r}")
    padding = []
    for size, kernel, stride, dilation in zip(
        input_size, kernel_size, strides, dilations, strict=True
    ):
        out_size = -(-size // stride)  # ceil: "same" keeps ceil(size / stride) outputs
        total = max((out_size - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        smaller, larger = total // 2, total - total // 2
        padding.append((larger, smaller) if pad_type == "same_lower" else (smaller, larger))
    return padding


@register("conv")
def conv(
    num: Numerics,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    strides: Sequence[int],
    pad_type: str,
    pad: Sequence[int],
    dilations: Sequence[int],
    groups: int,
) -> np.ndarray:
    padding = _conv_padding(pad_type, pad, x.shape[2:], weight.shape[2:], strides, dilations)

    def convolve(rows: np.ndarray) -> np.ndarray:
        inputs = _as_torch(rows)
        if all(before == after for before, after in padding):
            symmetric_padding = [before for before, _ in padding]
        else:
            # torch.nn.functional.pad lists (before, after) pairs from the last axis backwards.
            inputs = F.pad(inputs, [p for pair in reversed(padding) for p in pair])
            symmetric_padding = [0] * len(padding)
        return _TORCH_CONV[x.ndim - 2](
            inputs,
            _as_torch(weight),
            None if bias is None else _as_torch(bias),
            stride=[int(s) for s in strides],
            padding=symmetric_padding,
            dilation=[int(d) for d in dilations],
            groups=int(groups),
        ).numpy()

    return _row_by_row(num, convolve, x)


# ---------------------------------------------------------------------------------------------
# Shape and data movement


@register("reshape")
def reshape(num: Numerics, x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    # A 0 copies the matching axis of x, counted from the right (iOS17 semantics, which agree
    # with iOS15's whenever len(shape) == x.ndim); a 0 left of every axis of x is 1.
    target = [int(size) for size in shape]
    if num.rows > 1 and target[:1] == [1]:
        target[0] = num.rows  # a batched call's rows stay leading (executor.py)
    offset = x.ndim - len(target)
    for i, size in enumerate(target):
        if size == 0:
            target[i] = x.shape[i + offset] if i + offset >= 0 else 1
    return np.reshape(x, target)


@register("transpose")
def transpose(num: Numerics, x: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    return np.transpose(x, _int_tuple(perm))


@register("expand_dims")
def expand_dims(num: Numerics, x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    return np.expand_dims(x, _int_tuple(axes))


@register("squeeze")
def squeeze(num: Numerics, x: np.ndarray, axes: Sequence[int] | None) -> np.ndarray:
    return np.squeeze(x, _int_tuple(axes))


@register("reverse")
def reverse(num: Numerics, x: np.ndarray, axes: Sequence[int] | None) -> np.ndarray:
    return _without_negative_strides(np.flip(x, _int_tuple(axes)))


@register("concat")
def concat(
    num: Numerics, values: tuple[np.ndarray, ...], axis: int, interleave: bool
) -> np.ndarray:
    axis = int(axis) % values[0].ndim
    if not interleave:
        return np.concatenate(values, axis=axis)
    # Interleaving equal-shaped values along `axis`: stack them right after it, then merge.
    stacked = np.stack(values, axis=axis + 1)
    return stacked.reshape(values[0].shape[:axis] + (-1,) + values[0].shape[axis + 1 :])


@register("stack")
def stack(num: Numerics, values: tuple[np.ndarray, ...], axis: int) -> np.ndarray:
    return np.stack(values, axis=int(axis))


@register("split")
def split(
    num: Numerics,
    x: np.ndarray,
    axis: int,
    num_splits: int | None = None,
    split_sizes: Sequence[int] | None = None,
) -> tuple[np.ndarray, ...]:
    axis = int(axis) % x.ndim
    if split_sizes is None:
        if x.shape[axis] % int(num_splits):
            raise ValueError(f"axis {axis} of {x.shape} does not split in {num_splits} equal parts")
        split_sizes = [x.shape[axis] // int(num_splits)] * int(num_splits)
    # Slices, the views np.split returns, without its Python overhead (hundreds per chunk).
    ends = list(itertools.accumulate(int(size) for size in split_sizes))
    leading = (slice(None),) * axis
    return tuple(
        x[(*leading, slice(start, end))] for start, end in zip([0, *ends[:-1]], ends, strict=True)
    )


@register("slice_by_index")
def slice_by_index(
    num: Numerics,
    x: np.ndarray,
    begin: Sequence[int],
    end: Sequence[int],
    stride: Sequence[int] | None,
    begin_mask: Sequence[bool] | None,
    end_mask: Sequence[bool] | None,
    squeeze_mask: Sequence[bool] | None,
) -> np.ndarray:
    no_mask = [False] * x.ndim
    stride = [1] * x.ndim if stride is None else stride
    begin_mask = no_mask if begin_mask is None else begin_mask
    end_mask = no_mask if end_mask is None else end_mask
    squeeze_mask = no_mask if squeeze_mask is None else squeeze_mask
    index: list[int | slice] = []
    for axis in range(x.ndim):
        start = None if begin_mask[axis] else int(begin[axis])
        if squeeze_mask[axis]:
            # An integer index drops the axis; a masked begin is 0 whatever the stride (as
            # coremltools' value_inference slices it: begin None, stride +INT32_MAX).
            index.append(0 if start is None else start)
            continue
        stop = None if end_mask[axis] else int(end[axis])
        index.append(slice(start, stop, int(stride[axis])))
    return _without_negative_strides(x[tuple(index)])


@register("slice_by_size")
def slice_by_size(
    num: Numerics, x: np.ndarray, begin: Sequence[int], size: Sequence[int]
) -> np.ndarray:
    # A negative begin counts from the end; size -1 reaches the end of the axis.
    starts = [int(start) % length for start, length in zip(begin, x.shape, strict=True)]
    index = tuple(
        slice(start, None if int(length) == -1 else start + int(length))
        for start, length in zip(starts, size, strict=True)
    )
    return x[index]


_NUMPY_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


@register("pad")
def pad(
    num: Numerics, x: np.ndarray, pad: Sequence[int], mode: str, constant_val: float
) -> np.ndarray:
    # `pad` holds (before, after) pairs for the last len(pad) // 2 axes of x.
    pairs = np.asarray(pad, dtype=np.int64).reshape(-1, 2)
    widths = [(0, 0)] * (x.ndim - len(pairs)) + [tuple(pair) for pair in pairs]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=constant_val)
    return np.pad(x, widths, mode=_NUMPY_PAD_MODES[mode])


@register("tile")
def tile(num: Numerics, x: np.ndarray, reps: Sequence[int]) -> np.ndarray:
    return np.tile(x, _int_tuple(reps))


@register("select")
def select(num: Numerics, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(cond, a, b)


@register("band_part")
def band_part(num: Numerics, x: np.ndarray, lower: int, upper: int) -> np.ndarray:
    """Keep `lower` sub- and `upper` super-diagonals of the last two axes (negative: all)."""
    rows = np.arange(x.shape[-2])[:, None]
    cols = np.arange(x.shape[-1])[None, :]
    keep = np.ones((x.shape[-2], x.shape[-1]), dtype=bool)
    if lower >= 0:
        keep &= rows - cols <= lower
    if upper >= 0:
        keep &= cols - rows <= upper
    return np.where(keep, x, 0)


@register("cumsum")
def cumsum(num: Numerics, x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    axis = int(axis) % x.ndim
    values = np.flip(x, axis) if reverse else x
    if exclusive:
        # Shifted by one, 0 first: each sum leaves its own element out. (Subtracting the
        # element instead would turn an inf's neighbours into inf - inf = NaN.)
        head = np.zeros_like(values[(slice(None),) * axis + (slice(0, 1),)])
        body = values[(slice(None),) * axis + (slice(0, -1),)]
        values = np.concatenate([head, body], axis=axis)
    sums = np.cumsum(values, axis=axis)
    return _without_negative_strides(np.flip(sums, axis)) if reverse else sums


@register("gather")
def gather(
    num: Numerics,
    x: np.ndarray,
    indices: np.ndarray,
    axis: int,
    batch_dims: int = 0,
    validate_indices: bool = False,
) -> np.ndarray:
    axis, batch_dims = int(axis) % x.ndim, int(batch_dims)
    indices = np.asarray(indices, dtype=np.int64)
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    # The first batch_dims axes of x and indices pair up: gather within each batch element.
    batch_shape = x.shape[:batch_dims]
    rows = x.reshape((-1,) + x.shape[batch_dims:])
    row_indices = indices.reshape((-1,) + indices.shape[batch_dims:])
    gathered = [
        np.take(row, row_index, axis=axis - batch_dims)
        for row, row_index in zip(rows, row_indices, strict=True)
    ]
    return np.stack(gathered).reshape(batch_shape + gathered[0].shape)


@register("gather_along_axis")
def gather_along_axis(
    num: Numerics, x: np.ndarray, indices: np.ndarray, axis: int, validate_indices: bool = False
) -> np.ndarray:
    return np.take_along_axis(x, np.asarray(indices, dtype=np.int64), axis=int(axis))


@register("fill")
def fill(num: Numerics, shape: Sequence[int], value: Any) -> np.ndarray:
    return np.full(_int_tuple(shape), value)


@register("fill_like")
def fill_like(num: Numerics, ref_tensor: np.ndarray, value: Any) -> np.ndarray:
    return np.full(ref_tensor.shape, value)


@register("shape")
def shape(num: Numerics, x: np.ndarray) -> np.ndarray:
    return np.array(x.shape, dtype=np.int32)


@register("range_1d")
def range_1d(num: Numerics, end: Any, start: Any, step: Any) -> np.ndarray:
    # np.arange widens int32 bounds to int64; MIL's range keeps their type.
    return np.arange(start, end, step, dtype=np.result_type(start, end, step))


# ---------------------------------------------------------------------------------------------
# Compressed weights (export.compress, edge_conformer/export/compress.py): the iOS16 constexpr
# ops coremltools.optimize.coreml writes for the packages' iOS16 target. Their inputs are all
# constants, so the executor runs them once, at load, as Core ML may (see executor.py).


@register("constexpr_affine_dequantize")
def constexpr_affine_dequantize(
    num: Numerics, quantized_data: np.ndarray, zero_point: np.ndarray, scale: np.ndarray,
    axis: int,
) -> np.ndarray:
    """scale * (quantized_data - zero_point); a vector scale or zero point runs along `axis`."""
    def along_axis(param: np.ndarray) -> np.ndarray:
        if np.ndim(param) == 0:
            return np.asarray(param, dtype=np.float32)
        shape = [1] * quantized_data.ndim
        shape[int(axis)] = -1
        return np.asarray(param, dtype=np.float32).reshape(shape)

    return along_axis(scale) * (quantized_data.astype(np.float32) - along_axis(zero_point))


@register("constexpr_lut_to_dense")
def constexpr_lut_to_dense(
    num: Numerics, indices: np.ndarray, lut: np.ndarray, shape: Sequence[int],
    vector_axis: int | None = None,
) -> np.ndarray:
    """lut[index] for every element of `shape`, row-major. The indices are log2(len(lut))-bit
    fields packed into `indices` least significant bit first, an index split across two bytes
    continuing in the low bits of the next.

    iOS16's op. iOS18's (per-group and vector palettes: unpacked indices, a lut per group, an
    optional vector_axis and no shape) is not implemented: the packages target iOS16.
    """
    if vector_axis is not None:
        raise NotImplementedError("iOS18 vector palettes (vector_axis) are not implemented")
    nbits = int(np.log2(lut.size))
    count = int(np.prod(_int_tuple(shape)))
    bits = np.unpackbits(indices.astype(np.uint8), bitorder="little")[: count * nbits]
    weights = (1 << np.arange(nbits)).astype(np.int64)  # bit j of a field is worth 2**j
    return lut[bits.reshape(count, nbits).astype(np.int64) @ weights].reshape(_int_tuple(shape))
