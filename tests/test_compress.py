"""Compressed packages (export.compress): coremltools' compression, run by the executor, gated.

The unit tests compress one small random model at every level (module fixtures, seconds); the
slow ones export the tiny trained digits model with export.compress=auto, once where a
compressed level passes the gate and once where int8 must fail it.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import EXPORT_FILES, settings

from conftest import REPO, run_export
from edge_conformer.config.entry import check_command_line
from edge_conformer.config.schemas import COMPRESSIONS
from edge_conformer.export import compress
from edge_conformer.export.compress import (
    AUTO,
    AUTO_LEVELS,
    COMPRESSED_OP_TYPES,
    LEVELS,
    NONE,
    WEIGHT_THRESHOLD,
    compress_package,
    package_bytes,
)
from edge_conformer.export.convert import convert_to_coreml
from edge_conformer.export.graph import build_ane_model
from edge_conformer.export.parity import PsnrMeter, compression_notes
from edge_conformer.export.pipeline import export_checkpoint
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.mil.package import import_coremltools, load_program
from edge_conformer.model.conformer import ConformerCTC
from edge_conformer.records import ExportReport
from edge_conformer.runtime.checkpoint import resolve_checkpoint

N_MELS, WINDOW, VOCAB = 16, 48, 12
# The two kinds of constexpr op, at the mildest and most aggressive level (the kernel tests
# cover every palette size; the export tests every level).
UNIT_LEVELS = ("int8", "palettize4")
CONSTEXPR_OP = {"int8": "constexpr_affine_dequantize", "palettize8": "constexpr_lut_to_dense",
                "palettize6": "constexpr_lut_to_dense", "palettize4": "constexpr_lut_to_dense"}


def test_the_schema_offers_the_levels_compress_knows() -> None:
    assert COMPRESSIONS == (*LEVELS, AUTO) and set(CONSTEXPR_OP) == set(AUTO_LEVELS)


def test_an_unknown_level_is_one_line_naming_the_knob(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        check_command_line(REPO / "conf", "export", ["ckpt=x", "out=y", "export.compress=int4"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 1
    assert "export.compress='int4' is not one of: none, int8, palettize8" in err


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory) -> Path:
    """A small random model's FP16 package: its 64 x 64 and larger conv weights exceed
    WEIGHT_THRESHOLD, its biases, norms and rotary tables do not or are not conv weights."""
    torch.manual_seed(0)
    model = ConformerCTC(VOCAB, feat_dim=N_MELS, d_model=64, num_heads=2, num_layers=1,
                         conv_kernel_size=7, dropout=0.0).eval()
    out = tmp_path_factory.mktemp("compress") / "fp16" / "model.mlpackage"
    return convert_to_coreml(build_ane_model(model, window_frames=WINDOW), window_frames=WINDOW,
                             n_mels=N_MELS, out_path=out)


@pytest.fixture(scope="module")
def compressed(fp16_package: Path) -> dict[str, Path]:
    root = fp16_package.parent.parent
    return {level: compress_package(fp16_package, level, root / level / "model.mlpackage")
            for level in UNIT_LEVELS}


@pytest.fixture(scope="module")
def window_inputs() -> dict[str, np.ndarray]:
    features = np.random.default_rng(0).standard_normal((1, N_MELS, 1, WINDOW))
    return {"features": features.astype(np.float32),
            "feature_mask": np.ones((1, 1, 1, WINDOW), dtype=np.float32)}


def large_conv_weights(package: Path) -> set[str]:
    """Names of the FP16 program's constants that feed a conv and exceed WEIGHT_THRESHOLD."""
    _, function = load_program(package)
    return {
        op.name for op in function.operations
        if op.op_type == "const" and np.size(op.outputs[0].val) > WEIGHT_THRESHOLD
        and {child.op_type for child in op.outputs[0].child_ops} <= set(COMPRESSED_OP_TYPES)
    }


def test_only_large_conv_weights_are_compressed(fp16_package, compressed) -> None:
    expected = large_conv_weights(fp16_package)
    assert len(expected) >= 5  # the subsampling, feed-forward, attention and head weights
    for level, package in compressed.items():
        _, function = load_program(package)
        constexpr = [op for op in function.operations if op.op_type.startswith("constexpr_")]
        assert {op.op_type for op in constexpr} == {CONSTEXPR_OP[level]}
        # coremltools names each compressed weight after the constant it replaced.
        assert {op.name.rsplit("_", 1)[0] for op in constexpr} == expected
        assert all(child.op_type in COMPRESSED_OP_TYPES
                   for op in constexpr for child in op.outputs[0].child_ops)


def test_size_falls_and_error_grows_with_the_level(fp16_package, compressed,
                                                   window_inputs) -> None:
    reference = PackageExecutor(fp16_package, mode="fp16")(**window_inputs)["logits"]
    sizes, psnr = [package_bytes(fp16_package)], []
    for package in compressed.values():
        logits = PackageExecutor(package, mode="fp16")(**window_inputs)["logits"]
        meter = PsnrMeter()
        meter.add(torch.from_numpy(reference), torch.from_numpy(logits))
        sizes.append(package_bytes(package))
        psnr.append(meter.db)
    assert sizes[0] > sizes[1] > sizes[2]
    assert psnr[0] > 35 and psnr[0] > psnr[1] + 10


def test_the_executor_decompresses_as_coremltools_does(compressed, window_inputs,
                                                       tmp_path) -> None:
    """Each compressed package runs bit for bit as coremltools' own decompression of it
    (decompress_weights: every constexpr op back to a constant) does."""
    ct = import_coremltools()
    from coremltools.optimize.coreml import decompress_weights

    for level, package in compressed.items():
        copy = shutil.copytree(package, tmp_path / level / "copy.mlpackage")
        dense = tmp_path / level / "dense.mlpackage"
        decompress_weights(ct.models.MLModel(str(copy), skip_model_load=True)).save(str(dense))
        _, function = load_program(dense)
        assert not [op for op in function.operations if op.op_type.startswith("constexpr_")]
        for mode in ("fp32", "fp16"):
            got = PackageExecutor(package, mode=mode)(**window_inputs)["logits"]
            want = PackageExecutor(dense, mode=mode)(**window_inputs)["logits"]
            np.testing.assert_array_equal(got, want, err_msg=f"{level}, {mode}")


# ---------------------------------------------------------------------------------------------
# export.compress=auto end to end on the tiny trained digits model: both outcomes


def exported_package_ops(directory: Path) -> dict[str, int]:
    return PackageExecutor(directory / "model.mlpackage", mode="fp16").op_histogram()


@pytest.mark.slow
def test_auto_publishes_the_smallest_level_that_passes(trained_digits_run, tmp_path) -> None:
    out = tmp_path / "auto"
    report = export_checkpoint(trained_digits_run, out, settings(compress=AUTO, wandb=False)
                               ).report
    assert report.passed and out.is_dir()
    trials = report.compression_trials
    # The smallest first; every level but the last failed: the first to pass ends it.
    assert [trial.level for trial in trials] == list(AUTO_LEVELS[:len(trials)])
    assert not any(trial.section.passed or trial.published for trial in trials[:-1])
    assert {trial.package for trial in trials} == {"model.mlpackage"}
    published = trials[-1]
    assert published.section.passed and published.published and published.level != NONE
    assert published.bytes < published.fp16_bytes
    assert [trial.bytes for trial in trials] == sorted(trial.bytes for trial in trials)
    assert report.compression == published.level and report.windowed == published.section
    assert report.package_bytes == published.bytes == package_bytes(out / "model.mlpackage")
    assert CONSTEXPR_OP[published.level] in exported_package_ops(out)
    assert {p.name for p in out.iterdir()} == EXPORT_FILES  # no level left behind
    assert ExportReport.read(out / "parity.json") == report
    markdown = (out / "parity.md").read_text()
    assert "## Compression levels tried (export.compress)" in markdown
    assert f"| model | {published.level} |" in markdown


OUTLIER_CHANNELS, OUTLIER_SCALE = 8, 1000


def with_outlier_channels(run_dir: Path, out: Path) -> Path:
    """The run's checkpoint with outlier input channels in its compressed weights, the
    function unchanged: a few channels of the subsampling's last (pointwise) convolution,
    before a ReLU, and of every block's feed-forward norms (gain and bias) divided by 1000,
    and the weights that read them multiplied by 1000 (relu(x / s) * s = relu(x)). FP16 holds
    both scales well; but every row of those weights now holds entries 1000 times its others:
    symmetric per-channel int8 (a scale of max |w| / 127) rounds the others to zero, and a
    palette per tensor spends its values on the outliers, which dominate its squared error.
    The outlier channels that make weight compression fail in large models, by design."""
    checkpoint = torch.load(resolve_checkpoint(run_dir), map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    outliers = slice(0, OUTLIER_CHANNELS)
    pointwise, projection = "model.subsampling.conv2.1", "model.subsampling.out.weight"
    frequencies = state[projection].shape[1] // state[f"{pointwise}.weight"].shape[0]
    scaled_down = [f"{pointwise}.weight", f"{pointwise}.bias"]
    # The projection reads (channel, frequency) pairs, channel-major (subsampling.py).
    state[projection][:, :OUTLIER_CHANNELS * frequencies] *= OUTLIER_SCALE
    blocks = {key.split(".")[2] for key in state if key.startswith("model.blocks.")}
    for block, ff in itertools.product(sorted(blocks), ("1", "2")):
        scaled_down += [f"model.blocks.{block}.norm_ff{ff}.{p}" for p in ("weight", "bias")]
        state[f"model.blocks.{block}.ff{ff}.linear1.weight"][:, outliers] *= OUTLIER_SCALE
    for name in scaled_down:
        state[name][outliers] /= OUTLIER_SCALE
    torch.save(checkpoint, out)
    return out


@pytest.mark.slow
def test_auto_falls_back_to_fp16_naming_the_levels_that_failed(trained_digits_run, tmp_path,
                                                               monkeypatch) -> None:
    """No level can pass: int8 meets weights with outlier channels, and the palettes, which
    hold the tiny model's few decisive logits even then (its transcripts are mostly empty),
    are cut to one bit, two values per weight tensor. The FP16 package passes."""
    for level in compress.PALETTE_BITS:
        monkeypatch.setitem(compress.PALETTE_BITS, level, 1)
    ckpt = with_outlier_channels(trained_digits_run, tmp_path / "outlier.ckpt")
    out = tmp_path / "fallback"
    report = export_checkpoint(ckpt, out, settings(compress=AUTO, wandb=False)).report
    assert report.passed and out.is_dir()
    *failed, fp16 = report.compression_trials
    assert [trial.level for trial in failed] == list(AUTO_LEVELS)
    assert not any(trial.section.passed or trial.published for trial in failed)
    assert (fp16.level, fp16.section.passed, fp16.published) == (NONE, True, True)
    assert report.compression == NONE and report.windowed == fp16.section
    assert not any(op.startswith("constexpr_") for op in exported_package_ops(out))
    (note,) = compression_notes(report)
    # By how much: each level's own reasons from the gate.
    assert note == "model.mlpackage: " + "; ".join(
        f"{trial.level} failed the gate ({'; '.join(trial.section.reasons)})"
        for trial in failed) + f"; the export holds the FP16 package ({fp16.bytes / 1e6:.2f} MB)"
    assert note in (out / "parity.md").read_text()


@pytest.mark.slow
def test_a_level_compresses_and_gates_the_streaming_package_too(trained_streaming_run,
                                                                 tmp_path) -> None:
    out = tmp_path / "streaming-int8"
    done = run_export(trained_streaming_run, out, "export.compress=int8",
                      "export.max_utterances=4")
    assert done.returncode == 0, done.stderr[-3000:]
    report = ExportReport.read(out / "parity.json")
    assert report.passed and report.compression == "int8"
    assert report.stream_package["compression"] == "int8"
    windowed, streaming = report.compression_trials
    assert (windowed.package, streaming.package) == ("model.mlpackage", "stream.mlpackage")
    assert streaming.published and streaming.section == report.streaming
    assert report.stream_package["bytes"] == streaming.bytes < streaming.fp16_bytes
    stream_ops = PackageExecutor(out / "stream.mlpackage", mode="fp16").op_histogram()
    assert stream_ops["constexpr_affine_dequantize"] > 0
    printed = " ".join(done.stdout.split())
    assert "Compression levels tried (export.compress)" in printed
    assert "stream │ int8" in printed
