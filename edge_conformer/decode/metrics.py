"""WER and CER in percent (jiwer), the unit every number in this project uses."""

from __future__ import annotations

from collections.abc import Sequence

import jiwer


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level WER and CER in percent; empty hypotheses count as all-deleted."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return {"wer": float("nan"), "cer": float("nan")}
    refs = list(references)
    hyps = list(hypotheses)
    return {"wer": 100.0 * jiwer.wer(refs, hyps), "cer": 100.0 * jiwer.cer(refs, hyps)}
