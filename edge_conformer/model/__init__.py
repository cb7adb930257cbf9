"""Conformer-CTC model: subsampling, attention, convolution module, norms."""

from edge_conformer.model.conformer import ConformerBlock, ConformerCTC, count_parameters

__all__ = ["ConformerBlock", "ConformerCTC", "count_parameters"]
