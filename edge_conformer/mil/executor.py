"""Run a saved Core ML ML Program op by op in NumPy, modelling FP16 accelerator arithmetic.

Core ML itself only predicts on macOS; this executor reads the MIL program and weights back
from a `.mlpackage` and runs it anywhere, in one of `EXECUTOR_MODES`:

- "fp32": no rounding of op outputs. Checks the executor (and the conversion) against PyTorch.
- "fp16": each op computes in float32 and its output is rounded to FP16, as are constants,
  inputs and every float tensor: the Neural Engine stores nothing wider than FP16. The sums
  inside reductions, normalisations (layer_norm, ...) and softmax accumulate in order in FP32.
- "fp16-strict": "fp16", but those sums accumulate in FP16, every partial sum rounded. A
  pessimistic accelerator: on it an unprotected LayerNorm's sum of squares overflows
  (> 65504) for large activations.

Each mode is the numerics' `EmulatedArithmetic(storage, accumulate)` (`fp16.MODE_ARITHMETIC`,
docs/numerics.md section 1), so the package of a stabilised norm gives bit for bit what
`edge_conformer.numerics.emulate_layer_norm` computes.

Every run counts the non-finite values that op outputs (and the hidden statistics of fused
normalisations and softmax) contain, per op type, so callers can report `nonfinite_count`.
Compressed weights (`constexpr_*` ops, export.compress) are decompressed once, at load.

A batch in one call: a program declared for batch 1 (every package export writes) may be
called with N inputs stacked along that leading axis. Its ops then run once for all N, which
shares the executor's cost per op (most of a streaming chunk's time) among them, and each
output row is bit for bit what a call with that row alone gives: the kernels treat the
leading axis as independent rows (conv, einsum, matmul and linear compute row by row,
reshape keeps the rows). A program with an op not known to keep rows apart, or one whose
parameters mix, move or cut that axis (`batch_barrier`, the first such op), runs the rows one
call at a time instead.
Kernels live in `kernels`, the FP16 arithmetic in `fp16`, package reading in `package`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_conformer.mil.fp16 import MODE_ARITHMETIC, Numerics, count_nonfinite, round_to_fp16
from edge_conformer.mil.kernels import ELEMENTWISE_OP_TYPES, KERNELS, Kernel
from edge_conformer.mil.package import load_program

if TYPE_CHECKING:
    from coremltools.converters.mil.mil import Operation, Var

EXECUTOR_MODES = tuple(MODE_ARITHMETIC)  # "fp32", "fp16", "fp16-strict"
INPUT_OP_TYPE = "input"  # the stats key for inputs that overflow when rounded to FP16

# Ops whose float outputs hold only values of their float inputs, zeros or a stored constant.
# Every value the executor holds is already FP16 in the FP16 modes, so rounding these outputs
# would give back the same bits, and on finite inputs they are finite: their rounding is
# skipped, and so is their non-finite count when no input holds inf or NaN (a streaming chunk
# has hundreds of these ops, mostly splits and concats).
VALUE_PRESERVING_OPS = frozenset({
    "abs", "band_part", "concat", "expand_dims", "fill", "fill_like", "gather",
    "gather_along_axis", "identity", "maximum", "minimum", "pad", "reduce_max", "reduce_min",
    "relu", "reshape", "reverse", "select", "slice_by_index", "slice_by_size", "split",
    "squeeze", "stack", "tile", "transpose",
})


class UnsupportedOpError(NotImplementedError):
    """The package uses an op type that has no kernel in `kernels.KERNELS`."""


class OpExecutionError(RuntimeError):
    """A kernel failed; the message names the op, its type and the package."""


@dataclass(frozen=True)
class _Step:
    """One op of the program, resolved at load time."""

    name: str
    op_type: str
    kernel: Kernel
    defaults: dict[str, Any]  # MIL defaults of the optional inputs the program leaves out
    inputs: tuple[tuple[str, str], ...]  # input name -> value name
    input_lists: tuple[tuple[str, tuple[str, ...]], ...]  # input name -> value names (concat)
    reads: tuple[str, ...]  # every value name the op reads
    outputs: tuple[str, ...]
    preserves_values: bool  # see VALUE_PRESERVING_OPS
    rounds_to_fp16: bool
    release: tuple[str, ...]  # values nothing after this step reads: freed once it has run


class PackageExecutor:
    """Executes the `main` function of a saved `.mlpackage` in NumPy (see the module doc).

    Call it with one array per model input, by name; it returns the model outputs by name
    (float outputs as float32 arrays holding FP16 values outside fp32 mode).
    """

    def __init__(self, package_path: str | Path, mode: str = "fp16-strict") -> None:
        if mode not in EXECUTOR_MODES:
            raise ValueError(f"mode must be one of {EXECUTOR_MODES}, got {mode!r}")
        self.package_path = Path(package_path)
        self.mode = mode
        self._rounds_to_fp16 = mode != "fp32"
        self._numerics = Numerics(strict_fp16=mode == "fp16-strict")

        spec, function = load_program(self.package_path)
        self._input_shapes = {
            feature.name: tuple(feature.type.multiArrayType.shape)
            for feature in spec.description.input
        }
        self._inputs: dict[str, Var] = dict(function.inputs)
        self._output_names = tuple(var.name for var in function.outputs)
        operations = list(function.operations)
        self._check_supported(operations)
        self._histogram = Counter(op.op_type for op in operations if op.op_type != "const")
        self._constants = {
            op.outputs[0].name: self._as_stored(op.outputs[0].val)
            for op in operations
            if op.op_type == "const"
        }
        self.reset_stats()
        self._decompress([op for op in operations if _is_constexpr(op)])
        self._steps = self._plan(
            [op for op in operations if op.op_type != "const" and not _is_constexpr(op)]
        )
        self._drop_unread_constants()
        self.batch_barrier = next(
            (op.name for op in operations if _mixes_leading_axis(op)), None
        )
        # The constants that hold inf or NaN (a mask's -inf, say): see `_run_step`.
        self._nonfinite_constants = frozenset(
            name
            for name, value in self._constants.items()
            if isinstance(value, np.ndarray) and count_nonfinite(value)
        )

    # -- description -----------------------------------------------------------------------

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input shapes as the model description declares them (the default shape if flexible)."""
        return dict(self._input_shapes)

    def op_histogram(self) -> dict[str, int]:
        """Op count per op type in the program (constants excluded), most frequent first."""
        return dict(self._histogram.most_common())

    # -- statistics ------------------------------------------------------------------------

    def reset_stats(self) -> None:
        self.nonfinite_by_op_type: dict[str, int] = {}
        # The MIL name of the first op (or input) that held inf/NaN: where an overflow began.
        self.first_nonfinite_op: str | None = None

    @property
    def nonfinite_count(self) -> int:
        """inf/NaN values produced since construction or `reset_stats()`, over all ops."""
        return sum(self.nonfinite_by_op_type.values())

    def _record_nonfinite(self, op_type: str, op_name: str, count: int) -> None:
        self.nonfinite_by_op_type[op_type] = self.nonfinite_by_op_type.get(op_type, 0) + count
        if self.first_nonfinite_op is None:
            self.first_nonfinite_op = op_name

    # -- running ---------------------------------------------------------------------------

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for `inputs`; a leading axis of N > 1 where the program declares 1 is
        a batch of N independent inputs (see the module doc)."""
        batch = self._batch_size(inputs)
        if batch > 1 and self.batch_barrier is not None:
            rows = [self(**{name: value[row : row + 1] for name, value in inputs.items()})
                    for row in range(batch)]
            return {name: np.concatenate([outputs[name] for outputs in rows])
                    for name in self._output_names}
        # Overflow, inf - inf and the like are what this executor is for: count, don't warn.
        with np.errstate(all="ignore"):
            nonfinite_values = set(self._nonfinite_constants)
            values = {
                **self._constants, **self._prepare_inputs(inputs, nonfinite_values, batch)
            }
            self._numerics.rows = batch
            try:
                for step in self._steps:
                    self._run_step(step, values, nonfinite_values)
            finally:
                self._numerics.rows = 1
        return {name: values[name] for name in self._output_names}

    def _batch_size(self, inputs: Mapping[str, np.ndarray]) -> int:
        """N of a batched call (1 otherwise): the leading axis of the inputs the program
        declares with a leading 1, which must agree."""
        sizes = {
            np.shape(inputs[name])[0]
            for name, declared in self._input_shapes.items()
            if name in inputs and declared[:1] == (1,) and np.ndim(inputs[name])
        }
        if len(sizes) > 1:
            raise ValueError(
                f"{self.package_path}: a batched call stacks the same number of inputs in "
                f"every input, got leading axes {sorted(sizes)}"
            )
        return sizes.pop() if sizes else 1

    def _prepare_inputs(
        self, inputs: Mapping[str, np.ndarray], nonfinite_values: set[str], batch: int
    ) -> dict[str, np.ndarray]:
        missing = sorted(set(self._inputs) - set(inputs))
        unexpected = sorted(set(inputs) - set(self._inputs))
        if missing or unexpected:
            raise ValueError(
                f"{self.package_path} takes inputs {list(self._inputs)}; "
                f"missing {missing}, unexpected {unexpected}"
            )
        prepared = {}
        for name, var in self._inputs.items():
            # A copy, always: kernels hand arrays to torch, which wants them writable.
            array = self._as_stored(np.array(inputs[name], dtype=_storage_dtype(var)))
            declared = tuple(var.shape)
            if batch > 1 and declared[:1] == (1,):
                declared = (batch, *declared[1:])
            _check_shape(name, array.shape, declared)
            overflowed = count_nonfinite(array)
            if overflowed:
                self._record_nonfinite(INPUT_OP_TYPE, name, overflowed)
                nonfinite_values.add(name)
            prepared[name] = array
        return prepared

    def _run_step(self, step: _Step, values: dict[str, Any], nonfinite_values: set[str]) -> None:
        """Run one op on `values`, store its outputs there; `nonfinite_values` names the values
        that hold inf or NaN (kept up to date)."""
        arguments = {param: values[name] for param, name in step.inputs}
        for param, names in step.input_lists:
            arguments[param] = tuple(values[name] for name in names)
        try:
            result = step.kernel(self._numerics, **step.defaults, **arguments)
        except Exception as error:
            raise OpExecutionError(
                f"{self.package_path}: op {step.name!r} ({step.op_type}) failed: {error}"
            ) from error

        nonfinite = self._numerics.take_hidden_nonfinite()
        finite = step.preserves_values and nonfinite_values.isdisjoint(step.reads)
        for name, value in zip(step.outputs, _as_tuple(result), strict=True):
            stored = stored_value(np.asarray(value), step.rounds_to_fp16)
            count = 0 if finite else count_nonfinite(stored)
            if count:
                nonfinite_values.add(name)
                nonfinite += count
            values[name] = stored
        if nonfinite:
            self._record_nonfinite(step.op_type, step.name, nonfinite)
        for name in step.release:
            del values[name]

    def _as_stored(self, value: Any) -> Any:
        return stored_value(value, self._rounds_to_fp16)

    # -- loading ---------------------------------------------------------------------------

    def _decompress(self, operations: list[Operation]) -> None:
        """Run the compressed weights' constexpr ops (export.compress) once, into constants.

        Every input of a constexpr op is a constant, so its output is one too: Core ML itself
        may decompress at load time or at run time, with the same values. Their kernels
        compute in float32; an output of FP16 type (the type of the scale or lookup table, in
        an FP16 program) is then rounded to FP16 in every mode, fp32 included: it is a
        constant of the program, as exactly FP16 as the constants it replaced.
        """
        from coremltools.converters.mil.mil import types

        for op in operations:
            self._run_step(self._step(op, release=()), self._constants, nonfinite_values=set())
            for var in op.outputs:
                if var.dtype == types.fp16:
                    self._constants[var.name] = stored_value(self._constants[var.name], True)

    def _drop_unread_constants(self) -> None:
        """Free the constants no step reads: the compressed weights, once decompressed."""
        read = {name for step in self._steps for name in step.reads}
        read.update(self._output_names)
        self._constants = {name: value for name, value in self._constants.items() if name in read}

    def _check_supported(self, operations: list[Operation]) -> None:
        unsupported = Counter(
            op.op_type for op in operations if op.op_type != "const" and op.op_type not in KERNELS
        )
        if unsupported:
            listed = ", ".join(f"{op_type} (x{count})" for op_type, count in unsupported.items())
            raise UnsupportedOpError(
                f"{self.package_path}: no executor kernel for op type(s) {listed}; "
                "add one to edge_conformer/mil/kernels.py"
            )

    def _plan(self, operations: list[Operation]) -> list[_Step]:
        """Resolve every op once: its kernel, defaults, input sources and what it frees."""
        last_reader: dict[str, int] = {}
        for index, op in enumerate(operations):
            for var in _input_vars(op):
                if var.name not in self._constants:
                    last_reader[var.name] = index
        releases: dict[int, list[str]] = defaultdict(list)
        for name, index in last_reader.items():
            releases[index].append(name)
        for index, op in enumerate(operations):  # outputs nothing reads: free at once
            releases[index].extend(v.name for v in op.outputs if v.name not in last_reader)
        kept = set(self._output_names)
        return [
            self._step(op, tuple(name for name in releases[index] if name not in kept))
            for index, op in enumerate(operations)
        ]

    def _step(self, op: Operation, release: tuple[str, ...]) -> _Step:
        inputs = tuple(
            (param, binding.name)
            for param, binding in op.inputs.items()
            if not isinstance(binding, (tuple, list))
        )
        input_lists = tuple(
            (param, tuple(var.name for var in binding))
            for param, binding in op.inputs.items()
            if isinstance(binding, (tuple, list))
        )
        preserves_values = op.op_type in VALUE_PRESERVING_OPS
        defaults = {
            param: self._as_stored(value)
            for param, value in op.default_inputs().items()
            if param not in op.inputs
        }
        return _Step(
            name=op.name,
            op_type=op.op_type,
            kernel=KERNELS[op.op_type],
            defaults=defaults,
            inputs=inputs,
            input_lists=input_lists,
            reads=tuple(var.name for var in _input_vars(op)),
            outputs=tuple(var.name for var in op.outputs),
            preserves_values=preserves_values,
            rounds_to_fp16=self._rounds_to_fp16 and not preserves_values,
            release=release,
        )


def stored_value(value: Any, rounds_to_fp16: bool) -> Any:
    """A value as the executor holds it: floats in float32, FP16-rounded if `rounds_to_fp16`.

    Strings, integers, bools and None (op parameters, indices, masks) pass unchanged.
    """
    # An array (every op output) first: this runs on every output of every op.
    is_float = (
        value.dtype.kind == "f"
        if isinstance(value, np.ndarray)
        else isinstance(value, (float, np.floating))
    )
    if not is_float:
        return value
    array = np.asarray(value, dtype=np.float32)
    return round_to_fp16(array) if rounds_to_fp16 else array


# Ops whose `axis` or `axes` parameter says where they reduce, join, split or normalise: the
# rows stay apart unless it names the leading axis.
_AXIS_OP_TYPES = frozenset({
    "concat", "split", "stack", "softmax", "layer_norm", "expand_dims", "squeeze", "cumsum",
    "gather", "gather_along_axis", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min",
    "reduce_prod", "reduce_sum_square", "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum",
    "reduce_log_sum_exp", "reduce_argmax", "reduce_argmin",
})


def _mixes_leading_axis(op: Operation) -> bool:
    """Whether `op` could mix, move or cut the rows of a batched call (see the module doc).

    Conservative: an op type not listed here as keeping rows apart counts as mixing them.
    """
    if op.op_type == "const" or _is_constexpr(op) or op.op_type in ELEMENTWISE_OP_TYPES:
        return False
    params = {name: var.val for name, var in op.inputs.items()
              if not isinstance(var, (tuple, list))}
    rank = max((var.rank for var in _input_vars(op) if var.rank is not None), default=0)
    if op.op_type in _AXIS_OP_TYPES:
        axes = params.get("axis", params.get("axes"))
        return axes is None or any(int(a) % max(rank, 1) == 0 for a in np.atleast_1d(axes))
    check = _ROW_CHECKS.get(op.op_type)
    return check is None or check(params, rank, op)


def _flag(mask: Any, axis: int) -> bool:
    return mask is not None and bool(mask[axis])


def _slice_cuts_rows(params: dict[str, Any], rank: int, op: Operation) -> bool:
    begins_at_0 = _flag(params.get("begin_mask"), 0) or int(params["begin"][0]) == 0
    whole = _flag(params.get("end_mask"), 0) and not _flag(params.get("squeeze_mask"), 0)
    stride = 1 if params.get("stride") is None else int(params["stride"][0])
    return not (begins_at_0 and whole and stride == 1)


def _einsum_mixes_rows(params: dict[str, Any], rank: int, op: Operation) -> bool:
    # The kernel goes row by row when every term leads with one label: the batch's.
    terms = str(params["equation"]).replace(" ", "").replace("->", ",").split(",")
    return len({term[:1] for term in terms}) != 1


# The other op types that keep rows apart, each with the parameters under which it does (the
# kernels of conv, einsum, matmul and linear compute row by row; reshape keeps a leading 1 as
# the rows).
_ROW_CHECKS: dict[str, Callable[[dict[str, Any], int, Operation], bool]] = {
    "conv": lambda params, rank, op: False,
    "einsum": _einsum_mixes_rows,
    "matmul": lambda params, rank, op: any(
        var.rank is None or var.rank < 3 for name, var in op.inputs.items() if name in "xy"),
    "linear": lambda params, rank, op: op.inputs["x"].rank is None or op.inputs["x"].rank < 3,
    "transpose": lambda params, rank, op: int(params["perm"][0]) != 0,
    "reshape": lambda params, rank, op: int(params["shape"][0]) != 1,
    "slice_by_index": _slice_cuts_rows,
    "tile": lambda params, rank, op: len(params["reps"]) != rank or int(params["reps"][0]) != 1,
    "pad": lambda params, rank, op: (
        len(np.asarray(params["pad"])) // 2 == rank and bool(np.asarray(params["pad"])[:2].any())
    ),
}


def _is_constexpr(op: Operation) -> bool:
    return op.op_type.startswith("constexpr_")


def _input_vars(op: Operation) -> Iterator[Var]:
    for binding in op.inputs.values():
        yield from binding if isinstance(binding, (tuple, list)) else (binding,)


def _as_tuple(result: Any) -> tuple[Any, ...]:
    return result if isinstance(result, tuple) else (result,)


def _storage_dtype(var: Var) -> type[np.generic]:
    """float32 for every float type (FP16 is a rounding here, not a storage type)."""
    from coremltools.converters.mil.mil.types import nptype_from_builtin

    numpy_type = nptype_from_builtin(var.dtype)
    return np.float32 if np.issubdtype(numpy_type, np.floating) else numpy_type


def _check_shape(name: str, shape: tuple[int, ...], declared: tuple[Any, ...]) -> None:
    """Reject a shape that contradicts the program's; symbolic (flexible) dims match anything."""
    fits = len(shape) == len(declared) and all(
        not isinstance(size, (int, np.integer)) or size == actual
        for size, actual in zip(declared, shape, strict=True)
    )
    if not fits:
        raise ValueError(f"input {name!r} has shape {shape}, the program expects {declared}")
