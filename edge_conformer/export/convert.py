"""Core ML conversion of the Neural Engine graphs (one window, one streaming chunk), and a
histogram of the saved MIL program.

coremltools is imported lazily: it is an optional dependency (the `export` extra), and the
ANE graph itself must stay importable and testable without it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from edge_conformer.export.stream_graph import AneStreamingConformerCTC
from edge_conformer.mil.package import import_coremltools, load_program

PACKAGE_SUFFIX = ".mlpackage"
# What coremltools saves beside a torch.export conversion for ExecuTorch's debugger (MIL ops back
# to the exported graph's nodes). Not in the package's Manifest.json, so Core ML never reads
# it; on the xs digits model it was 0.48 MB of a 3.77 MB package (13 %). Not shipped.
DEBUG_HANDLE_MAPPING = "executorch_debug_handle_mapping.json"


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
    inputs = {
        "features": (1, n_mels, 1, window_frames),
        "feature_mask": (1, 1, 1, window_frames),
    }
    return convert_graph(ane_model, inputs, ("logits",), out_path, precision)


def convert_stream_to_coreml(
    stream_model: AneStreamingConformerCTC, out_path: Path, precision: str = "fp16"
) -> Path:
    """Export a streaming chunk graph (see `build_stream_model`) as a Core ML ML Program with
    the fixed-shape inputs and outputs of its `StreamShapes` (runtime/stream_package.py).

    Caches are plain inputs and outputs, not Core ML states (iOS 18): states are reported
    failing on the Neural Engine, so the package targets iOS 16 like the offline one.
    """
    shapes = stream_model.shapes
    return convert_graph(
        stream_model, shapes.inputs(), tuple(shapes.outputs()), out_path, precision
    )


def convert_graph(
    graph: nn.Module,
    inputs: dict[str, tuple[int, ...]],
    outputs: tuple[str, ...],
    out_path: Path,
    precision: str = "fp16",
) -> Path:
    """Convert `graph` (called with one tensor per entry of `inputs`, in order, returning
    `outputs` in order) at those fixed shapes and save it to `out_path` (".mlpackage").

    `precision`: "fp16" (compute units CPU_AND_NE) or "fp32" (CPU only, a reference build).
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

    # The values are irrelevant (the graph has no data-dependent control flow): only shapes.
    example = tuple(torch.ones(shape) for shape in inputs.values())
    # torch.export, not torch.jit.trace: trace is deprecated in torch 2.14, and coremltools 9
    # fails on the size arithmetic it records. Decomposing to core ATen keeps einsum intact.
    exported = torch.export.export(graph.eval(), example).run_decompositions({})

    mlmodel = ct.convert(
        exported,
        convert_to="mlprogram",
        inputs=[ct.TensorType(name, shape=shape) for name, shape in inputs.items()],
        outputs=[ct.TensorType(name) for name in outputs],
        compute_precision=compute_precision,
        compute_units=compute_units,
        minimum_deployment_target=ct.target.iOS16,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(out_path))
    (out_path / DEBUG_HANDLE_MAPPING).unlink(missing_ok=True)
    return out_path


def mil_op_histogram(package_path: Path) -> dict[str, int]:
    """Count the ops of a saved package's main function by type (constants excluded).

    Reads the MIL program back from the package, so it works on Linux where Core ML cannot
    load the model. Most frequent op types first.
    """
    _, function = load_program(Path(package_path))
    counts = Counter(op.op_type for op in function.operations if op.op_type != "const")
    return dict(counts.most_common())
