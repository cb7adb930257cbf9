"""Conformer-CTC model: subsampling, attention, convolution module, norms, streaming."""

from edge_conformer.model.conformer import ConformerBlock, ConformerCTC, count_parameters
from edge_conformer.model.factory import build_model
from edge_conformer.model.streaming import ChunkContext, StreamingState, stream_logits

__all__ = [
    "ChunkContext",
    "ConformerBlock",
    "ConformerCTC",
    "StreamingState",
    "build_model",
    "count_parameters",
    "stream_logits",
]
