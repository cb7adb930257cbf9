"""The package executor against PyTorch, on converted pieces of a channels-first Conformer.

Conversions are module-scoped fixtures: each costs a second or two, every test reuses them.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import time
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge_conformer.export import mil_op_histogram
from edge_conformer.mil.executor import (
    PackageExecutor,
    UnsupportedOpError,
)
from edge_conformer.mil.fp16 import Numerics
from edge_conformer.mil.kernels import KERNELS
from edge_conformer.mil.package import load_program
from edge_conformer.numerics.formats import FP16, FP32, accumulate_mean, accumulate_sum

CHANNELS = 32
MELS = 16
FEATURE_FRAMES = 40
FRAMES = FEATURE_FRAMES // 4  # after two stride-2 convs


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of (B, C, 1, S) written out as mean, variance and rsqrt.

    Nothing protects the sum of squares. coremltools fuses the pattern into one `layer_norm`
    (and the affine part into a `batch_norm`).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(1, channels, 1, 1))
        self.bias = nn.Parameter(0.1 * torch.randn(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        variance = (centred * centred).mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(variance + 1e-5) * self.weight + self.bias


class ConformerPieces(nn.Module):
    """Subsampling convs, a convolution module, norms and one attention head, channels-first.

    features (1, MELS, T) and frame_mask (1, 1, 1, S) -> (1, 2C, 1, S).
    """

    def __init__(self, channels: int = CHANNELS, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels)
        self.front = nn.Conv2d(channels * MELS // 4, channels, 1)
        self.pointwise = nn.Conv2d(channels, 2 * channels, 1)
        self.depthwise = nn.Conv2d(
            channels, channels, (1, kernel_size), padding=(0, kernel_size // 2), groups=channels
        )
        self.norm = ChannelLayerNorm(channels)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        channels = self.front.out_channels
        x = features.reshape(1, 1, MELS, -1)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (1, C, MELS/4, S)
        x = self.front(x.reshape(1, -1, 1, FRAMES))  # (1, C, 1, S)
        content, gate = self.pointwise(x).split(channels, dim=1)  # GLU, written out
        x = x + F.silu(self.depthwise(content * torch.sigmoid(gate)))
        x = self.norm(x)
        x = F.layer_norm(x.permute(0, 3, 2, 1), (channels,)).permute(0, 3, 2, 1)
        scores = torch.einsum("bchq,bchk->bkhq", self.query(x), self.key(x)) * channels**-0.5
        key_mask = frame_mask.reshape(1, -1, 1, 1)
        scores = torch.where(key_mask > 0.5, scores, torch.full_like(scores, -1e4))
        context = torch.einsum("bkhq,bchk->bchq", scores.softmax(dim=1), x)
        return torch.cat([x, context], dim=1)


def convert(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    path: Path,
    precision: str,
    target: str = "iOS16",
) -> Path:
    # As edge_conformer.export.convert does: torch.export (torch.jit.trace is deprecated), every
    # op decomposed to the core ATen set that coremltools converts.
    exported = torch.export.export(module.eval(), tuple(inputs.values())).run_decompositions({})
    model = ct.convert(
        exported,
        inputs=[ct.TensorType(name=name, shape=x.shape) for name, x in inputs.items()],
        convert_to="mlprogram",
        compute_precision=getattr(ct.precision, precision),
        minimum_deployment_target=getattr(ct.target, target),
    )
    model.save(str(path))
    return path


def pieces_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    frame_mask = torch.ones(1, 1, 1, FRAMES)
    frame_mask[..., -3:] = 0  # a padded tail
    return {
        "features": torch.randn(1, MELS, FEATURE_FRAMES, generator=generator),
        "frame_mask": frame_mask,
    }


@pytest.fixture(scope="module")
def pieces() -> ConformerPieces:
    torch.manual_seed(0)
    return ConformerPieces().eval()


@pytest.fixture(scope="module")
def pieces_packages(pieces, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pieces")
    return {
        precision: convert(pieces, pieces_inputs(), folder / f"{precision}.mlpackage", precision)
        for precision in ("FLOAT32", "FLOAT16")
    }


@pytest.fixture(scope="module")
def layer_norm_package(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("norm") / "norm.mlpackage"
    return convert(ChannelLayerNorm(512), {"x": torch.randn(1, 512, 1, 16)}, path, "FLOAT16")


def run(executor: PackageExecutor, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    (output,) = executor(**{name: x.numpy() for name, x in inputs.items()}).values()
    return output


def reference(module: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return module(*inputs.values()).numpy()


# ---------------------------------------------------------------------------------------------
# Agreement with PyTorch


def test_fp32_mode_matches_pytorch(pieces, pieces_packages):
    inputs = pieces_inputs(seed=1)
    executor = PackageExecutor(pieces_packages["FLOAT32"], mode="fp32")
    np.testing.assert_allclose(run(executor, inputs), reference(pieces, inputs), atol=1e-4)
    assert executor.nonfinite_count == 0


@pytest.mark.parametrize("mode", ["fp16", "fp16-strict"])
def test_fp16_modes_match_pytorch_within_fp16_error(pieces, pieces_packages, mode):
    inputs = pieces_inputs(seed=2)
    expected = reference(pieces, inputs)
    executor = PackageExecutor(pieces_packages["FLOAT16"], mode=mode)
    output = run(executor, inputs)
    # FP16 keeps 11 significant bits (relative spacing 1e-3); over ~30 ops the error measured
    # here is about 1e-3 of the output range, so 5e-3 flags real faults, not rounding.
    np.testing.assert_allclose(output, expected, atol=5e-3 * np.abs(expected).max())
    assert executor.nonfinite_count == 0
    assert np.array_equal(output, output.astype(np.float16).astype(np.float32))


def test_fp32_inputs_and_outputs_cast_to_and_from_fp16(tmp_path):
    # Before iOS16 a program's inputs and outputs are FP32: conversion adds `cast` ops.
    torch.manual_seed(0)
    norm = ChannelLayerNorm(64)
    inputs = {"x": torch.randn(1, 64, 1, 8)}
    package = convert(norm, inputs, tmp_path / "norm.mlpackage", "FLOAT16", target="iOS15")
    executor = PackageExecutor(package, mode="fp16")
    assert executor.op_histogram()["cast"] == 2
    expected = reference(norm, inputs)
    np.testing.assert_allclose(run(executor, inputs), expected, atol=5e-3 * np.abs(expected).max())


def test_fp16_mode_rounds_what_fp32_mode_keeps(pieces_packages):
    inputs = pieces_inputs(seed=3)
    exact = run(PackageExecutor(pieces_packages["FLOAT32"], mode="fp32"), inputs)
    rounded = run(PackageExecutor(pieces_packages["FLOAT32"], mode="fp16"), inputs)
    assert not np.array_equal(exact, rounded)
    np.testing.assert_allclose(rounded, exact, atol=5e-3 * np.abs(exact).max())


# ---------------------------------------------------------------------------------------------
# The behaviour fp16-strict exists for


def test_unprotected_layer_norm_overflows_only_under_strict_fp16(layer_norm_package):
    assert PackageExecutor(layer_norm_package).op_histogram()["layer_norm"] == 1
    large = {"x": 300 * torch.randn(1, 512, 1, 16, generator=torch.Generator().manual_seed(4))}

    fp16 = PackageExecutor(layer_norm_package, mode="fp16")
    assert np.isfinite(run(fp16, large)).all()
    assert fp16.nonfinite_count == 0

    # Squares of ~300 are ~90000 > 65504: accumulated in FP16, every frame's sum of squares,
    # hence its variance, is inf. (The output itself stays finite: x / sqrt(inf) is 0.)
    strict = PackageExecutor(layer_norm_package, mode="fp16-strict")
    run(strict, large)
    assert strict.nonfinite_by_op_type == {"layer_norm": 16}
    assert strict.nonfinite_count == 16
    assert strict.first_nonfinite_op is not None


def test_strict_fp16_layer_norm_stays_finite_for_small_activations(layer_norm_package):
    small = {"x": 3 * torch.randn(1, 512, 1, 16, generator=torch.Generator().manual_seed(5))}
    strict = PackageExecutor(layer_norm_package, mode="fp16-strict")
    run(strict, small)
    assert strict.nonfinite_count == 0


def test_nonfinite_count_accumulates_until_reset(layer_norm_package):
    large = {"x": 300 * torch.randn(1, 512, 1, 16, generator=torch.Generator().manual_seed(6))}
    strict = PackageExecutor(layer_norm_package, mode="fp16-strict")
    run(strict, large)
    run(strict, large)
    assert strict.nonfinite_count == 32
    strict.reset_stats()
    assert strict.nonfinite_count == 0
    assert strict.first_nonfinite_op is None


def test_inputs_beyond_fp16_range_count_as_nonfinite(layer_norm_package):
    executor = PackageExecutor(layer_norm_package, mode="fp16")
    run(executor, {"x": torch.full((1, 512, 1, 16), 1e5)})
    assert executor.nonfinite_by_op_type["input"] == 512 * 16


def test_strict_sum_stalls_where_fp16_spacing_exceeds_the_term():
    ones = np.ones((4096, 3), dtype=np.float32)
    # Above 2048 FP16 values are 2 apart: 2048 + 1 rounds back to 2048 (ties to even).
    np.testing.assert_array_equal(Numerics(strict_fp16=True).sum(ones, (0,), False), 2048)
    np.testing.assert_array_equal(Numerics(strict_fp16=False).sum(ones, (0,), False), 4096)


@pytest.mark.parametrize("strict", [False, True])
def test_sums_and_means_are_the_numerics_accumulation_bit_for_bit(strict: bool) -> None:
    """Numerics computes `accumulate_sum` and `accumulate_mean` in NumPy: the same bits, over any
    axes, on magnitudes from FP16 subnormals up to overflow and with inf, NaN and -0.0 terms
    (a sum that meets a NaN is redone through those functions: the first inputs have none)."""
    fmt = FP16 if strict else FP32
    numerics = Numerics(strict_fp16=strict)
    rng = np.random.default_rng(0)
    inputs = itertools.product(
        [(1, 80, 1, 16), (3, 7, 5), (600, 3)],
        [(2.0, [-0.0]), (4.5, [np.inf, -np.inf, np.nan, -0.0])],  # largest magnitude, specials
    )
    for shape, (exponent, specials) in inputs:
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-7, exponent, shape)
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, len(specials), replace=False)] = specials
        x = x.astype(np.float32)
        for axes in [(0,), (1,), (-1,), (1, 0), (0, x.ndim - 1), tuple(range(x.ndim))]:
            for keepdims in (True, False):
                for ours, emulated in ((numerics.sum, accumulate_sum),
                                       (numerics.mean, accumulate_mean)):
                    got = ours(x, axes, keepdims)
                    want = emulated(torch.from_numpy(x), axes, fmt, keepdim=keepdims).numpy()
                    assert isinstance(got, np.ndarray) and got.shape == want.shape
                    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_value_preserving_ops_count_the_nonfinite_values_they_pass_on(tmp_path) -> None:
    """The executor skips counting a value-preserving op's non-finite outputs only when none of
    its inputs holds any: a concat of an overflowed input counts them again."""

    class Doubled(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x], dim=1)

    path = convert(Doubled(), {"x": torch.zeros(1, 4, 1, 8)}, tmp_path / "cat.mlpackage",
                   "FLOAT16")
    executor = PackageExecutor(path, mode="fp16")
    assert "concat" in executor.op_histogram()
    x = torch.ones(1, 4, 1, 8)
    run(executor, {"x": x})
    assert executor.nonfinite_count == 0
    x[0, 1, 0, :3] = 1e5  # beyond FP16: inf once stored
    run(executor, {"x": x})
    assert executor.nonfinite_by_op_type == {"input": 3, "concat": 6}


# ---------------------------------------------------------------------------------------------
# Batched calls: rows stacked on the leading axis the program declares as 1


def rows_of(seeds: range) -> dict[str, np.ndarray]:
    inputs = [pieces_inputs(seed) for seed in seeds]
    return {name: np.concatenate([row[name].numpy() for row in inputs]) for name in inputs[0]}


@pytest.mark.parametrize("mode", ["fp32", "fp16-strict"])
def test_a_batched_call_gives_each_row_what_it_gives_alone(pieces_packages, mode):
    # The pieces reshape the batch axis, convolve (regular, depthwise, 1x1), contract with
    # einsum and normalise over channels: every kind of op the packages use.
    executor = PackageExecutor(pieces_packages["FLOAT16"], mode=mode)
    assert executor.batch_barrier is None
    batch = rows_of(range(5))
    together = run(executor, {name: torch.from_numpy(x) for name, x in batch.items()})
    assert together.shape[0] == 5
    for row in range(5):
        alone = run(executor, {name: torch.from_numpy(x[row : row + 1])
                               for name, x in batch.items()})
        np.testing.assert_array_equal(together[row : row + 1], alone)


def test_a_program_that_mixes_rows_runs_a_batch_row_by_row(tmp_path):
    class Total(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - x.sum()  # a sum over every axis, the batch's too

    path = convert(Total(), {"x": torch.zeros(1, 4, 1, 8)}, tmp_path / "total.mlpackage",
                   "FLOAT32")
    executor = PackageExecutor(path, mode="fp32")
    assert executor.batch_barrier is not None  # the reduce_sum
    x = np.random.default_rng(0).standard_normal((3, 4, 1, 8)).astype(np.float32)
    (together,) = executor(x=x).values()
    for row in range(3):
        (alone,) = executor(x=x[row : row + 1]).values()
        np.testing.assert_array_equal(together[row : row + 1], alone)


def test_a_batched_call_stacks_as_many_rows_in_every_input(pieces_packages):
    executor = PackageExecutor(pieces_packages["FLOAT16"], mode="fp16")
    batch = rows_of(range(3))
    batch["frame_mask"] = batch["frame_mask"][:2]
    with pytest.raises(ValueError, match=r"same number of inputs in every input.*\[2, 3\]"):
        executor(**batch)


# ---------------------------------------------------------------------------------------------
# Kernels whose parameters the converted modules above do not reach


def call_kernel(op_type: str, **inputs) -> np.ndarray:
    return KERNELS[op_type](Numerics(strict_fp16=False), **inputs)


def test_conv_same_padding_puts_the_odd_pixel_after():
    x = np.random.default_rng(0).standard_normal((1, 4, 9, 10)).astype(np.float32)
    weight = np.random.default_rng(1).standard_normal((8, 2, 4, 4)).astype(np.float32)
    conv = dict(x=x, weight=weight, bias=None, strides=[2, 2], pad=[0] * 4, dilations=[1, 1])
    out = call_kernel("conv", pad_type="same", groups=2, **conv)
    # ceil(9 / 2) = 5 rows need 3 padding rows (1 before, 2 after); 10 columns need 2.
    padded = F.pad(torch.from_numpy(x), [1, 1, 1, 2])
    expected = F.conv2d(padded, torch.from_numpy(weight), stride=2, groups=2).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_slice_by_index_masks():
    x = np.arange(24).reshape(2, 3, 4)
    out = call_kernel(
        "slice_by_index",
        x=x,
        begin=[1, 0, -1],
        end=[0, 0, 0],
        stride=[1, 2, -1],
        begin_mask=[False, False, False],
        end_mask=[False, True, True],
        squeeze_mask=[True, False, False],
    )
    np.testing.assert_array_equal(out, x[1, 0::2, ::-1])


def test_reshape_zero_copies_the_axis_counted_from_the_right():
    out = call_kernel("reshape", x=np.zeros((2, 50)), shape=[1, 0, -1, 0])
    assert out.shape == (1, 1, 2, 50)


def test_concat_interleave_and_pad_reflect():
    a, b = np.array([[1, 2]]), np.array([[3, 4]])
    interleaved = call_kernel("concat", values=(a, b), axis=1, interleave=True)
    np.testing.assert_array_equal(interleaved, [[1, 3, 2, 4]])
    padded = call_kernel(
        "pad", x=np.array([[1, 2, 3, 4]]), pad=[2, 1], mode="reflect", constant_val=0.0
    )
    np.testing.assert_array_equal(padded, [[3, 2, 1, 2, 3, 4, 3]])


# ---------------------------------------------------------------------------------------------
# Description, errors and the kernel registry


def test_description_and_op_histogram(pieces_packages):
    executor = PackageExecutor(pieces_packages["FLOAT16"], mode="fp16")
    assert executor.input_names == ("features", "frame_mask")
    assert executor.input_shapes == {
        "features": (1, MELS, FEATURE_FRAMES),
        "frame_mask": (1, 1, 1, FRAMES),
    }
    assert len(executor.output_names) == 1
    histogram = executor.op_histogram()
    assert "const" not in histogram
    assert histogram["conv"] == 7  # conv1, conv2, front, pointwise, depthwise, query, key
    assert histogram["einsum"] + histogram.get("matmul", 0) == 2  # may lower one to matmul
    assert histogram["layer_norm"] == 2
    assert histogram["softmax"] == 1
    assert list(histogram.values()) == sorted(histogram.values(), reverse=True)


def test_reading_a_package_touches_none_of_its_files(layer_norm_package):
    def snapshot() -> dict[Path, tuple[str | None, int]]:
        paths = [layer_norm_package, *layer_norm_package.rglob("*")]
        return {
            path: (
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None,
                path.stat().st_mtime_ns,
            )
            for path in paths
        }

    before = snapshot()
    time.sleep(0.05)  # so that a rewrite, even of the same bytes, shows as a later mtime
    run(PackageExecutor(layer_norm_package, mode="fp16"), {"x": torch.zeros(1, 512, 1, 16)})
    mil_op_histogram(layer_norm_package)
    assert snapshot() == before


def test_load_program_names_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="Manifest.json"):
        load_program(tmp_path)
    (tmp_path / "Manifest.json").write_text('{"itemInfoEntries": {}}')
    with pytest.raises(ValueError, match="rootModelIdentifier"):
        load_program(tmp_path)


def test_unsupported_op_names_the_op_type_and_the_package(layer_norm_package, monkeypatch):
    monkeypatch.delitem(KERNELS, "layer_norm")
    with pytest.raises(UnsupportedOpError, match="layer_norm") as error:
        PackageExecutor(layer_norm_package)
    assert str(layer_norm_package) in str(error.value)


def test_rejects_unknown_mode_and_mismatched_inputs(layer_norm_package):
    with pytest.raises(ValueError, match="mode"):
        PackageExecutor(layer_norm_package, mode="bf16")
    executor = PackageExecutor(layer_norm_package, mode="fp16")
    with pytest.raises(ValueError, match="missing"):
        executor(y=np.zeros((1, 512, 1, 16)))
    with pytest.raises(ValueError, match="shape"):
        executor(x=np.zeros((1, 512, 1, 8)))


def test_kernel_parameters_are_the_mil_op_inputs():
    """A kernel takes exactly its op's MIL inputs (all opset versions), optional ones as such."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    for op_type, kernel in KERNELS.items():
        specs = [
            cls.input_spec.input_types
            for cls in SSAOpRegistry.core_ops[op_type].values()
            if cls is not None
        ]
        mil_inputs = {name for spec in specs for name in spec}
        parameters = list(inspect.signature(kernel).parameters.values())[1:]  # after `num`
        assert {p.name for p in parameters} == mil_inputs, op_type
        for parameter in parameters:
            if parameter.default is inspect.Parameter.empty:
                continue  # MIL's defaults fill optional inputs, the executor passes them all
            assert all(
                parameter.name not in spec or spec[parameter.name].optional for spec in specs
            ), (op_type, parameter.name)


def test_small_and_large_arrays_round_to_fp16_alike() -> None:
    """round_to_fp16 takes NumPy's cast below SMALL_ARRAY elements and torch's above: both must
    give the same FP16 values, overflow, subnormals, ties and signed zeros included."""
    from edge_conformer.mil.fp16 import SMALL_ARRAY, round_to_fp16

    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.normal(scale=10.0 ** rng.uniform(-9, 6, 4000)).astype(np.float32),
        np.float32([65504, 65520, 65519.99, -7e4, 2.0**-24, 2.0**-25, 3 * 2.0**-26, -0.0,
                    1 + 2.0**-11, 1 + 3 * 2.0**-11, np.inf, -np.inf]),
    ])
    large = round_to_fp16(values)  # torch
    small = np.concatenate([round_to_fp16(part) for part in np.array_split(values, 8)])
    assert values.size > SMALL_ARRAY >= max(len(p) for p in np.array_split(values, 8))
    np.testing.assert_array_equal(small, large)
    np.testing.assert_array_equal(np.signbit(small), np.signbit(large))
    assert round_to_fp16(np.float32(3.0)).shape == ()  # a scalar stays a scalar
