"""export.streaming: which checkpoints get a streaming package, at which chunk geometry, and the
refusals and warnings that come before any conversion, each naming its knob."""

from __future__ import annotations

import logging

import pytest

from conftest import REPO
from edge_conformer.config.entry import check_command_line
from edge_conformer.config.schemas import ConfigError, StreamingExport
from edge_conformer.export.stream_checks import streaming_context
from edge_conformer.model.streaming import ChunkContext

CKPT = "runs/tiny/checkpoints/last.ckpt"


def training_config(trained: bool = True, conv_context: str = "chunk",
                    normalize: str = "global", eval_left: int = 64) -> dict:
    """The parts of a checkpoint's resolved training config the checks read."""
    return {
        "model": {
            "conv_context": conv_context,
            "streaming": {"enabled": trained, "chunk_sizes": [4, 8, 16], "eval_chunk": 8,
                          "eval_left": eval_left},
        },
        "data": {"features": {"normalize": normalize}},
    }


def knobs(enabled: object = "auto", chunk_frames: int | None = 16,
          left_frames: int | None = 64) -> StreamingExport:
    return StreamingExport(enabled=enabled, chunk_frames=chunk_frames, left_frames=left_frames)


@pytest.fixture
def warnings(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="edge_conformer.export.stream_checks")
    return caplog


def test_auto_streams_exactly_the_models_trained_to_stream(warnings) -> None:
    assert streaming_context(knobs(), training_config(), CKPT) == ChunkContext(16, 64)
    assert streaming_context(knobs(), training_config(conv_context="causal"), CKPT)
    assert streaming_context(knobs(), training_config(trained=False), CKPT) is None
    assert streaming_context(knobs(False), training_config(), CKPT) is None
    assert not warnings.records
    # Chunk-trained, but its convolutions look ahead: no streaming package, and a warning.
    assert streaming_context(knobs(), training_config(conv_context="symmetric"), CKPT) is None
    assert "model.conv_context=symmetric" in warnings.text
    # Chunk-trained, but normalised per utterance (e.g. xs on LibriSpeech): likewise skipped.
    assert streaming_context(knobs(), training_config(normalize="utterance"), CKPT) is None
    assert "data.features.normalize=utterance" in warnings.text


def test_null_takes_the_models_deployed_setting() -> None:
    context = streaming_context(knobs(chunk_frames=None, left_frames=None), training_config(),
                                CKPT)
    assert context == ChunkContext(8, 64)  # model.streaming.eval_chunk / eval_left


def test_a_model_trained_without_chunks_streams_on_request_with_a_warning(warnings) -> None:
    context = streaming_context(knobs(True), training_config(trained=False), CKPT)
    assert context == ChunkContext(16, 64)
    assert "trained without chunks (model.streaming.enabled=false)" in warnings.text


def test_a_chunk_larger_than_any_trained_one_warns(warnings) -> None:
    assert streaming_context(knobs(chunk_frames=32), training_config(), CKPT)
    assert ("export.streaming.chunk_frames=32 is larger than any chunk the model was trained on "
            "(model.streaming.chunk_sizes=[4, 8, 16])") in warnings.text


@pytest.mark.parametrize(
    ("enabled", "config", "message"),
    [
        (True, training_config(conv_context="symmetric"), "model.conv_context=symmetric cannot "),
        (True, training_config(normalize="utterance"), "data.features.normalize=utterance"),
        (True, training_config(trained=False, normalize="utterance"),
         "data.features.normalize=utterance"),
    ],
)
def test_what_cannot_stream_is_refused_naming_the_knob(enabled, config, message) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        streaming_context(knobs(enabled), config, CKPT)
    assert str(refused.value).startswith(CKPT)
    assert "export.streaming.enabled=false" in str(refused.value)  # the way out, named


def test_an_unlimited_left_context_taken_from_the_model_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"export.streaming.left_frames=null: "
                       r"model.streaming.eval_left=-1 \(unlimited\) cannot be exported"):
        streaming_context(knobs(left_frames=None), training_config(eval_left=-1), CKPT)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("export.streaming.left_frames=40",
         "export.streaming.left_frames=40 must be a multiple of chunk_frames=16"),
        ("export.streaming.left_frames=-1", "export.streaming.left_frames=-1 (unlimited) "
         "cannot be exported: the streaming package's caches have fixed shapes"),
        ("export.streaming.left_frames=0", "export.streaming.left_frames=0 must be a multiple"),
        ("export.streaming.enabled=maybe",
         "export.streaming.enabled='maybe' is not one of: auto, true, false"),
    ],
)
def test_export_py_refuses_a_geometry_without_fixed_shapes(override, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        check_command_line(REPO / "conf", "export", ["ckpt=x", "out=y", override])
    assert exit_.value.code == 1 and message in capsys.readouterr().err
