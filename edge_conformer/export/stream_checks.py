"""Whether an export writes a streaming package, and at which chunk geometry: decided from the
checkpoint's training config and `export.streaming`, before any conversion.

A setting that cannot stream is refused in one line naming the knob that says so; a setting
that streams but may recognise badly is exported with a warning (the streaming parity table
then shows what it costs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_conformer.config.schemas import (
    ConfigError,
    StreamingExport,
    require_fixed_left_context,
)
from edge_conformer.errors import UserInputError
from edge_conformer.model.streaming import ChunkContext
from edge_conformer.runtime.streaming import check_streamable

log = logging.getLogger(__name__)

DISABLE_HINT = "export.streaming.enabled=false exports the windowed package alone"


def streaming_context(
    knobs: StreamingExport, config: Mapping[str, Any], source: str | Path
) -> ChunkContext | None:
    """The streaming package's chunk context for the checkpoint `source` trained with `config`
    (its resolved training config), or None when the export writes none."""
    model = config["model"]
    trained = bool(model["streaming"]["enabled"])
    if knobs.enabled is False or (knobs.enabled == "auto" and not trained):
        return None
    try:
        check_streamable(source, model["conv_context"], config["data"]["features"]["normalize"])
    except UserInputError as error:
        if knobs.enabled == "auto":
            # Trained under chunk masks, but its convolutions look ahead or its features are
            # normalised per utterance: "auto" exports what can be exported, and says why.
            log.warning("no streaming package (export.streaming.enabled=auto): %s", error)
            return None
        raise ConfigError(f"{error}; {DISABLE_HINT}") from None
    context = _chunk_context(knobs, model["streaming"])
    if not trained:
        log.warning("export.streaming.enabled=true: the model was trained without chunks "
                    "(model.streaming.enabled=false); the streaming WER will show the cost")
    elif context.chunk_frames > max(model["streaming"]["chunk_sizes"]):
        log.warning("export.streaming.chunk_frames=%d is larger than any chunk the model was "
                    "trained on (model.streaming.chunk_sizes=%s)", context.chunk_frames,
                    list(model["streaming"]["chunk_sizes"]))
    return context


def _chunk_context(knobs: StreamingExport, trained: Mapping[str, Any]) -> ChunkContext:
    """The knobs' chunk geometry, null taking the model's eval_chunk / eval_left."""
    chunk_key, chunk = "export.streaming.chunk_frames", knobs.chunk_frames
    if chunk is None:
        chunk_key, chunk = f"{chunk_key}=null: model.streaming.eval_chunk", trained["eval_chunk"]
    left_key, left = "export.streaming.left_frames", knobs.left_frames
    if left is None:
        left_key, left = f"{left_key}=null: model.streaming.eval_left", trained["eval_left"]
    require_fixed_left_context(chunk_key, chunk, left_key, left)
    return ChunkContext(chunk, left)
