"""Conformer-CTC model: subsampling, attention, convolution module, norms."""

from edge_conformer.model.conformer import ConformerBlock, ConformerCTC, count_parameters
from edge_conformer.model.factory import build_model

__all__ = ["ConformerBlock", "ConformerCTC", "build_model", "count_parameters"]
