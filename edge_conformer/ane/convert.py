"""Core ML conversion of the Neural Engine graph, and a histogram of the saved MIL program.

coremltools is imported lazily: it is an optional dependency (the `export` extra), and the
ANE graph itself must stay importable and testable without it.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

PACKAGE_SUFFIX = ".mlpackage"


class _ExpectedCoremltoolsNoise(logging.Filter):
    """Drops coremltools log lines that say nothing about this conversion.

    - "Torch version X has not been tested with coremltools": it compares version numbers only;
      whether conversion of *this* graph works is what tests/test_ane_graph.py checks.
    - "Failed to load _ML...: No module named 'coremltools.libcoremlpython'" off macOS: the
      Core ML runtime exists only on Apple platforms, so prediction is unavailable by design.
      On macOS the same line means a broken install, so it is kept there.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "has not been tested with coremltools" in message:
            return False
        runtime_missing = "No module named 'coremltools.libcoremlpython'" in message
        return not (runtime_missing and sys.platform != "darwin")


_NOISE_FILTER = _ExpectedCoremltoolsNoise()


def _import_coremltools() -> ModuleType:
    # The filter must be installed before the first import: the version check runs at import.
    coreml_log = logging.getLogger("coremltools")
    coreml_log.addFilter(_NOISE_FILTER)
    # Its INFO lines (one per converted and per removed op, thousands for a model) would bury
    # export.py's own progress display whenever the root logger is at INFO, as Hydra sets it.
    coreml_log.setLevel(logging.WARNING)
    import coremltools

    return coremltools


def convert_to_coreml(
    ane_model: nn.Module,
    *,
    window_frames: int,
    n_mels: int,
    out_path: Path,
    precision: str = "fp16",
) -> Path:
    """Export `ane_model` (see `build_ane_model`) and save it as a Core ML ML Program.

    `out_path` is the package to write and must end in ".mlpackage"; it is returned.
    `precision` is "fp16" (the Neural Engine's format, compute units CPU_AND_NE) or "fp32"
    (a reference build: the Neural Engine has no FP32, so it targets the CPU only).
    Inputs are "features" (1, n_mels, 1, window_frames) and "feature_mask" (1, 1, 1,
    window_frames), the output is "logits"; shapes are fixed to one window because flexible
    shapes can push a model off the Neural Engine.
    """
    ct = _import_coremltools()
    settings = {
        "fp16": (ct.precision.FLOAT16, ct.ComputeUnit.CPU_AND_NE),
        "fp32": (ct.precision.FLOAT32, ct.ComputeUnit.CPU_ONLY),
    }
    if precision not in settings:
        raise ValueError(f"precision must be one of {sorted(settings)}, got {precision!r}")
    out_path = Path(out_path)
    if out_path.suffix != PACKAGE_SUFFIX:
        raise ValueError(f"out_path must end in {PACKAGE_SUFFIX}, got {out_path}")
    compute_precision, compute_units = settings[precision]

    features_shape = (1, n_mels, 1, window_frames)
    mask_shape = (1, 1, 1, window_frames)
    example = (torch.randn(features_shape), torch.ones(mask_shape))
    # torch.export, not torch.jit.trace: trace is deprecated in torch 2.14, and coremltools 9
    # fails on the size arithmetic it records. Decomposing to core ATen keeps einsum intact.
    exported = torch.export.export(ane_model.eval(), example).run_decompositions({})

    mlmodel = ct.convert(
        exported,
        convert_to="mlprogram",
        inputs=[
            ct.TensorType("features", shape=features_shape),
            ct.TensorType("feature_mask", shape=mask_shape),
        ],
        outputs=[ct.TensorType("logits")],
        compute_precision=compute_precision,
        compute_units=compute_units,
        minimum_deployment_target=ct.target.iOS16,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(out_path))
    return out_path


def mil_op_histogram(package_path: Path) -> dict[str, int]:
    """Count the ops of a saved package's `main` function by type (constants excluded).

    Reads the MIL program back from the package, so it works on Linux where Core ML cannot
    load the model. Most frequent op types first.
    """
    ct = _import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    package_path = Path(package_path)
    spec = ct.models.MLModel(str(package_path), skip_model_load=True).get_spec()
    weights_dir = package_path / "Data" / "com.apple.CoreML" / "weights"
    program = load(spec, spec.specificationVersion, file_weights_dir=str(weights_dir))
    counts = Counter(
        op.op_type for op in program.functions["main"].operations if op.op_type != "const"
    )
    return dict(counts.most_common())
