"""One FP16 arithmetic model: the package executor computes what the numerics' emulation proves.

Each executor mode is `EmulatedArithmetic(storage, accumulate)` of `edge_conformer.numerics`
(docs/numerics.md, section 1). Here a converted package of the model's stabilised channel norm
runs in the executor and must give, bit for bit, what `emulate_layer_norm` computes with the
same accumulator, on inputs from tiny to near FP16's overflow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge_conformer.export import convert_to_coreml, mil_op_histogram
from edge_conformer.export.layers import ChannelNorm
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.mil.fp16 import MODE_ARITHMETIC, Numerics
from edge_conformer.model.norms import MADNorm
from edge_conformer.numerics import FP16, FP32, emulate_layer_norm
from edge_conformer.numerics.arithmetic import EmulatedArithmetic

CHANNELS = 176  # the S model's width
FRAMES = 48
EPS = 1e-5
FP16_MODES = ("fp16", "fp16-strict")
# (norm kind, pre-normaliser) -> p of the Lp norm. "none" keeps the MAD norm's two reduce_means
# unprotected: its sums overflow FP16 for large inputs where the FP32 accumulator does not.
NORMS = {("l2", "mad"): 2.0, ("mad", "mad"): 1.0, ("mad", "none"): 1.0}


class NormOnly(nn.Module):
    """A ChannelNorm with the export's input and output signature (the mask is unused)."""

    def __init__(self, kind: str, prenormalizer: str) -> None:
        super().__init__()
        norm = nn.LayerNorm(CHANNELS, eps=EPS) if kind == "l2" else MADNorm(CHANNELS, eps=EPS)
        # Unit weight and zero bias: coremltools drops the affine ops instead of fusing them
        # into a batch_norm, whose kernel rounds differently from a mul and an add.
        self.norm = ChannelNorm(norm, prenormalizer)

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
        return self.norm(features)


@pytest.fixture(scope="module", params=list(NORMS), ids=lambda key: "-".join(key))
def norm_package(request, tmp_path_factory) -> tuple[Path, float, str]:
    kind, prenormalizer = request.param
    path = tmp_path_factory.mktemp("norm") / f"{kind}-{prenormalizer}.mlpackage"
    convert_to_coreml(
        NormOnly(kind, prenormalizer), window_frames=FRAMES, n_mels=CHANNELS, out_path=path
    )
    return path, NORMS[request.param], prenormalizer


def stress_frames(seed: int) -> torch.Tensor:
    """(1, CHANNELS, 1, FRAMES) FP32 inputs, one kind of frame per column: Gaussian frames at
    scales from 1e-4 to 1e4 (sums far beyond 65504), offsets of 1000 with a small spread,
    single spikes and constants."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-4, 4, FRAMES)
    x = scales * torch.randn(CHANNELS, FRAMES, generator=gen)
    x[:, 0::6] = 1000 + torch.randn(CHANNELS, len(range(0, FRAMES, 6)), generator=gen)
    x[:, 1::6] = 0.0
    x[7, 1::6] = 6e4
    x[:, 2::12] = -3.0
    return x.reshape(1, CHANNELS, 1, FRAMES)


def executor_output(package: Path, mode: str, x: torch.Tensor) -> np.ndarray:
    executor = PackageExecutor(package, mode=mode)
    return executor(features=x.numpy(), feature_mask=np.ones((1, 1, 1, FRAMES), np.float32))[
        "logits"
    ]


def emulated_output(x: torch.Tensor, p: float, prenormalizer: str, mode: str) -> np.ndarray:
    arithmetic = MODE_ARITHMETIC[mode]
    emulation = emulate_layer_norm(
        x, EPS, dim=1, p=p, prenormalizer=prenormalizer,
        fmt=arithmetic.storage, accumulate_fmt=arithmetic.accumulate,
    )
    return emulation.output.float().numpy()


@pytest.mark.slow
def test_the_norm_is_converted_op_by_op(norm_package) -> None:
    path, _, _ = norm_package
    histogram = mil_op_histogram(path)
    # Nothing fused: the program runs the emulated op sequence, one MIL op per emulated op.
    assert not {"layer_norm", "batch_norm", "inverse", "rsqrt"} & set(histogram)
    assert histogram.get("reduce_mean") and histogram.get("real_div")


@pytest.mark.slow
@pytest.mark.parametrize("mode", FP16_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_executor_gives_the_emulated_norm_bit_for_bit(norm_package, mode: str, seed: int) -> None:
    path, p, prenormalizer = norm_package
    x = stress_frames(seed)

    expected = emulated_output(x, p, prenormalizer, mode)
    np.testing.assert_array_equal(executor_output(path, mode, x), expected)  # NaN where NaN


@pytest.mark.slow
def test_the_accumulator_decides_where_unprotected_sums_overflow(norm_package) -> None:
    path, p, prenormalizer = norm_package
    x = stress_frames(seed=0)
    fp16 = executor_output(path, "fp16", x)
    strict = executor_output(path, "fp16-strict", x)

    # The comparison above is not vacuous: the accumulator changes the result.
    assert not np.array_equal(fp16, strict)
    assert np.isfinite(fp16).all()
    if prenormalizer == "mad":
        assert np.isfinite(strict).all()
    else:  # a sum of 176 values of ~1000 overflows FP16 (the mean itself would not)
        assert not np.isfinite(strict[..., 0]).any()


def test_numerics_of_each_mode_is_the_emulated_arithmetic() -> None:
    assert MODE_ARITHMETIC["fp16"].storage is FP16 and MODE_ARITHMETIC["fp16"].accumulate is FP32
    assert MODE_ARITHMETIC["fp16-strict"].accumulate is FP16
    gen = torch.Generator().manual_seed(3)
    # Magnitudes up to 3e3 over 512 terms: the FP16 accumulator overflows on some rows.
    x = (torch.randn(6, 512, 5, generator=gen) * torch.logspace(-3, 3.5, 6)[:, None, None]).half()
    for mode in FP16_MODES:
        arithmetic = MODE_ARITHMETIC[mode]
        numerics = Numerics(strict_fp16=mode == "fp16-strict")
        emulated = EmulatedArithmetic(arithmetic.storage, arithmetic.accumulate)
        assert numerics.accumulate_fmt is arithmetic.accumulate
        pairs = ((numerics.sum, emulated.sum), (numerics.mean, emulated.mean))
        for numerics_op, emulated_op in pairs:
            # What the executor stores for a reduce op: the kernel's result rounded to FP16.
            stored = torch.from_numpy(numerics_op(x.float().numpy(), (1,), True)).half()
            np.testing.assert_array_equal(stored.double(), emulated_op(x.double(), 1))
