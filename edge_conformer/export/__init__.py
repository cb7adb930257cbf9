"""Apple Neural Engine export: the channels-first graph of a trained Conformer-CTC, its Core ML
conversion, and inspection of the saved program.

`build_ane_model` rewrites a trained `ConformerCTC` (same weights) into (B, C, 1, S) layers:
1x1 convs for linears, per-head einsum attention, BatchNorm folded into the depthwise conv,
overflow-safe norms and softmax. `convert_to_coreml` saves it as an FP16 ML Program and
`mil_op_histogram` counts the op types of a saved package.
"""

from edge_conformer.export.convert import convert_to_coreml, mil_op_histogram
from edge_conformer.export.graph import (
    AneConformerCTC,
    build_ane_model,
    key_padding_bias,
)

__all__ = [
    "AneConformerCTC",
    "build_ane_model",
    "convert_to_coreml",
    "key_padding_bias",
    "mil_op_histogram",
]
