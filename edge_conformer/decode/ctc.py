"""Greedy CTC decoding: best class per frame, merge repeats, drop blanks (index 0)."""

from __future__ import annotations

import torch

from edge_conformer.data.tokenizer import Tokenizer


def collapse_ctc(frame_ids: torch.Tensor) -> list[int]:
    """Best-path ids of one utterance (1-D) -> token ids (SentencePiece ids, blank removed)."""
    if frame_ids.numel() == 0:
        return []
    keep = torch.ones_like(frame_ids, dtype=torch.bool)
    keep[1:] = frame_ids[1:] != frame_ids[:-1]
    tokens = frame_ids[keep & (frame_ids != 0)]
    return (tokens - 1).tolist()


def greedy_ctc_decode(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """(B, T, V+1) logits or log-probs and valid frame counts -> token ids per utterance."""
    best = logits.argmax(dim=-1).cpu()
    return [collapse_ctc(best[i, : int(n)]) for i, n in enumerate(lengths.cpu())]


def decode_logits(logits: torch.Tensor, tokenizer: Tokenizer) -> str:
    """Greedy CTC transcript of one utterance's logits (frames, vocab + 1)."""
    (token_ids,) = greedy_ctc_decode(logits[None], torch.tensor([logits.shape[0]]))
    return tokenizer.decode(token_ids)
