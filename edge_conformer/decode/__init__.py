"""Decoding of CTC logits and word/character error rates."""

from edge_conformer.decode.ctc import decode_logits, greedy_ctc_decode
from edge_conformer.decode.metrics import error_rates

__all__ = ["decode_logits", "error_rates", "greedy_ctc_decode"]
