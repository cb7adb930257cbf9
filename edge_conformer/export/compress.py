"""Compressed weights for the exported packages (export.compress), through coremltools' own
`coremltools.optimize.coreml`: nothing here quantises or clusters a weight itself.

The packages target iOS16 (convert.py), where coremltools offers:

- `int8`: linear, symmetric, per output channel (`constexpr_affine_dequantize`): half the
  bytes of FP16 plus one scale per channel;
- `palettize8` / `palettize6` / `palettize4`: k-means palettes of 256 / 64 / 16 FP16 values
  per weight tensor (`constexpr_lut_to_dense`). Per-grouped-channel palettes, vector
  palettes and per-block or 4-bit linear quantisation need an iOS18 program, which the
  packages do not target (the same constraint that keeps states out of the streaming package).

What is compressed: the weights of `conv` ops only (every Linear is a 1x1 conv in the Neural
Engine graph, plus the depthwise and subsampling convolutions). The other constants stay FP16:
the rotary position tables, masks and softmax or norm constants are not learned weights, and
an error in them reaches every frame at once.

Of those, only tensors above `WEIGHT_THRESHOLD` elements are compressed (coremltools'
default, chosen here on purpose): at or below it lie every bias (at most 4 d_model elements,
2048 for the L model, and a vector compressed per channel would store one scale per element,
saving nothing) and, up to the S model, the first subsampling convolution (d_model x 9 taps,
reading the raw features). With the other constants they are 1.5% of an int8 S package's
constant bytes (benchmarks/compression.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edge_conformer.mil.package import import_coremltools

NONE = "none"  # the FP16 package as converted
AUTO = "auto"  # the smallest of AUTO_LEVELS that passes the gate, else the FP16 package
# From the mildest to the most aggressive: 16 bits a compressed weight, then 8, 6 and 4.
LEVELS = (NONE, "int8", "palettize8", "palettize6", "palettize4")
# The order auto gates them in: the smallest first, so that the first to pass is the smallest
# that passes, whatever the others would do (a level can fail by one utterance where a smaller
# one passes), at one gate run per level that fails. A package's size follows its bits before
# any gate runs; of the two 8-bit levels, palettize8's one palette per tensor weighs less
# than int8's scale and zero point per output channel wherever a tensor has more than 170
# output channels, and int8 is the mildest, the last resort.
AUTO_LEVELS = ("palettize4", "palettize6", "palettize8", "int8")
WEIGHT_THRESHOLD = 2048  # elements; larger weight tensors are compressed (see above)
COMPRESSED_OP_TYPES = ("conv",)  # the ops whose weights are compressed (see above)
PALETTE_BITS = {"palettize8": 8, "palettize6": 6, "palettize4": 4}


def levels_to_try(compress: str) -> tuple[str, ...]:
    """The levels export.compress asks the gate to try, in order."""
    if compress == AUTO:
        return AUTO_LEVELS
    if compress not in LEVELS:
        raise ValueError(f"compress must be one of {(*LEVELS, AUTO)}, got {compress!r}")
    return (compress,)


def _op_config(level: str) -> Any:
    import coremltools.optimize.coreml as cto

    if level == "int8":
        return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                           granularity="per_channel",
                                           weight_threshold=WEIGHT_THRESHOLD)
    # k-means (kmeans1d's exact 1-D clustering for large FP16 tensors, else scikit-learn's,
    # seeded): the palette that minimises the weights' squared error.
    return cto.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS[level],
                                  granularity="per_tensor", weight_threshold=WEIGHT_THRESHOLD)


def compress_package(package: Path, level: str, out: Path) -> Path:
    """Write `package` (an FP16 .mlpackage) with its weights compressed at `level` to `out`;
    `none` copies it. Returns `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if level == NONE:
        shutil.copytree(package, out)
        return out
    ct = import_coremltools()
    import coremltools.optimize.coreml as cto

    compress = cto.linear_quantize_weights if level == "int8" else cto.palettize_weights
    config = cto.OptimizationConfig(
        op_type_configs={op_type: _op_config(level) for op_type in COMPRESSED_OP_TYPES}
    )
    # A copy is opened: MLModel rewrites the Manifest.json of the package it opens.
    source = out.parent / f".source-{out.name}"
    shutil.copytree(package, source)
    try:
        compress(ct.models.MLModel(str(source), skip_model_load=True), config).save(str(out))
    finally:
        shutil.rmtree(source)
    return out


def package_bytes(package: Path) -> int:
    """A package's size on disk: the sum of its files' sizes."""
    return sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
