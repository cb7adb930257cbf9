"""Core ML conversion of the Neural Engine graph, and a histogram of the saved MIL program.

coremltools is imported lazily: it is an optional dependency (the `export` extra), and the
ANE graph itself must stay importable and testable without it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from edge_conformer.mil.package import import_coremltools, load_program

PACKAGE_SUFFIX = ".mlpackage"


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
    ct = import_coremltools()
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
    """Count the ops of a saved package's main function by type (constants excluded).

    Reads the MIL program back from the package, so it works on Linux where Core ML cannot
    load the model. Most frequent op types first.
    """
    _, function = load_program(Path(package_path))
    counts = Counter(op.op_type for op in function.operations if op.op_type != "const")
    return dict(counts.most_common())
