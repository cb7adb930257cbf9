"""The streaming package: its channels-first chunk graph, Core ML conversion and host loop.

Proof-ladder step 2: the channels-first chunk graph (torch, FP32), driven through the host loop
(`StreamPackage`), computes what the PyTorch chunk loop (`stream_logits`) computes.
Step 3: the saved `stream.mlpackage`, run op by op by the MIL executor in fp32 mode through the
same host loop, computes it too, and its next-cache outputs are the chunk loop's caches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import randomize_norms
from edge_conformer.data.features import FeatureSettings, FeatureStats, LogMelFeatures
from edge_conformer.export.convert import convert_stream_to_coreml, mil_op_histogram
from edge_conformer.export.stream_graph import AneStreamingConformerCTC, build_stream_model
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.mil.package import load_program
from edge_conformer.model import ConformerCTC
from edge_conformer.model.streaming import ChunkContext, StreamingState, stream_logits
from edge_conformer.runtime.frontend import StreamingLogMel
from edge_conformer.runtime.stream_package import (
    CACHES,
    StreamPackage,
    stream_description,
    stream_package_logits,
    stream_package_logits_of,
)

N_MELS = 24
VOCAB = 10
NUM_HEADS = 2
LENGTHS = [203, 150, 61, 13]  # feature frames: none a multiple of 4C, one under one chunk
GRAPH_TOLERANCE = 1e-4  # max abs logit difference, FP32 graph vs FP32 chunk loop
FP32_PACKAGE_TOLERANCE = 1e-4  # an FP32 build run by the fp32 executor
FP16_WEIGHTS_TOLERANCE = 5e-3  # times max |logit|: the FP16 build keeps its weights in FP16
# (chunk, left, conv_context, subsampling, norm, d_model, kernel, layers): both subsampling
# kinds and norms; the kernel-15 conv caches (7 or 14 frames) span several small chunks.
SETTINGS = {
    "c4-l8-chunk": (4, 8, "chunk", "depthwise", "l2", 32, 15, 2),
    "c8-l16-causal": (8, 16, "causal", "regular", "mad", 48, 7, 2),
    "c16-l64-chunk": (16, 64, "chunk", "regular", "l2", 32, 9, 3),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (see test_streaming)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(setting: str) -> tuple[ConformerCTC, ChunkContext]:
    """A random eval-mode model whose norms and BatchNorms are not identities, and its context."""
    chunk, left, conv_context, subsampling, norm, d_model, kernel, layers = SETTINGS[setting]
    torch.manual_seed(0)
    model = ConformerCTC(
        VOCAB, feat_dim=N_MELS, d_model=d_model, num_heads=NUM_HEADS, num_layers=layers,
        conv_kernel_size=kernel, conv_context=conv_context, subsampling=subsampling, norm=norm,
        dropout=0.0,
    )
    randomize_norms(model)
    return model.eval(), ChunkContext(chunk, left)


def streaming_features(normalize: str = "global") -> LogMelFeatures:
    stats = FeatureStats([0.0] * N_MELS, [1.0] * N_MELS) if normalize == "global" else None
    return LogMelFeatures(FeatureSettings(n_mels=N_MELS, normalize=normalize), stats)


def description(model: ConformerCTC, context: ChunkContext) -> dict:
    return stream_description(model, context, streaming_features())


def torch_predict(graph: AneStreamingConformerCTC) -> Callable[[Mapping], dict]:
    """The torch graph as a package's predict: named arrays in, named arrays out."""
    shapes = graph.shapes

    def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = graph(*(torch.from_numpy(inputs[name]) for name in shapes.inputs()))
        return {name: out.numpy() for name, out in zip(shapes.outputs(), outputs, strict=True)}

    return predict


def utterance(frames: int, seed: int) -> torch.Tensor:
    return torch.randn(frames, N_MELS, generator=torch.Generator().manual_seed(seed))


def package_caches(state: StreamingState) -> dict[str, np.ndarray]:
    """A one-utterance StreamingState in the package's channels-first cache layout."""

    def stacked(per_layer: torch.Tensor) -> torch.Tensor:
        """(layers, 1, d, frames) -> (1, layers * d, 1, frames): layer i at [i*d, (i+1)*d)."""
        layers, _, channels, frames = per_layer.shape
        return per_layer.reshape(1, layers * channels, 1, frames)

    caches = {
        "feature_cache": state.features.permute(0, 2, 1)[..., None, :],  # (1, n_mels, 1, 1)
        "half_rate_cache": state.half_rate.permute(0, 1, 3, 2),  # (1, channels, F', 1)
        "key_cache": stacked(state.keys.transpose(2, 3)),
        "value_cache": stacked(state.values.transpose(2, 3)),
        "conv_cache": stacked(state.conv),
        "cache_mask": state.key_valid.float()[:, None, None, :],
    }
    return {name: cache.numpy() for name, cache in caches.items()}


def assert_caches_follow_chunk_loop(
    package: StreamPackage, model: ConformerCTC, context: ChunkContext, feats: torch.Tensor,
    atol: float,
) -> int:
    """Step the package and model.forward_chunk side by side, from the initial caches on:
    every chunk's logits and next caches agree. Returns the number of chunks."""
    step = context.feature_frames
    state = StreamingState.initial(model, context)
    caches = package.initial_caches()
    chunks = 0
    for start in range(0, feats.shape[0], step):
        for name in CACHES:
            np.testing.assert_allclose(caches[name], package_caches(state)[name], atol=atol)
        chunk = feats[start : start + step]
        logits, caches = package.step(chunk, caches)
        padded = nn.functional.pad(chunk, (0, 0, 0, step - chunk.shape[0]))
        with torch.no_grad():
            expected, state = model.forward_chunk(
                padded[None], state, torch.tensor([chunk.shape[0]])
            )
        torch.testing.assert_close(logits, expected[0, : logits.shape[0]], atol=atol, rtol=0)
        chunks += 1
    return chunks


# ---------------------------------------------------------------------------------------------
# Step 2: the channels-first chunk graph


@pytest.mark.parametrize("setting", SETTINGS)
def test_stream_graph_equals_chunk_loop(setting: str) -> None:
    model, context = make_model(setting)
    package = StreamPackage(torch_predict(build_stream_model(model, context)),
                            description(model, context))
    for seed, frames in enumerate(LENGTHS):
        feats = utterance(frames, seed)
        logits = stream_package_logits(package, feats)
        expected = stream_logits(model, feats, context)
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, atol=GRAPH_TOLERANCE, rtol=0)


@pytest.mark.parametrize("setting", SETTINGS)
def test_stream_graph_caches_are_the_chunk_loop_state(setting: str) -> None:
    model, context = make_model(setting)
    package = StreamPackage(torch_predict(build_stream_model(model, context)),
                            description(model, context))
    chunks = assert_caches_follow_chunk_loop(
        package, model, context, utterance(LENGTHS[0], seed=7), atol=GRAPH_TOLERANCE
    )
    assert chunks >= 3


@pytest.mark.parametrize(
    ("prenormalizer", "softmax_rescale"), [("none", False), ("maxabs", True), ("mad", False)]
)
def test_numerics_options_keep_the_function(prenormalizer: str, softmax_rescale: bool) -> None:
    model, context = make_model("c8-l16-causal")
    graph = build_stream_model(
        model, context, prenormalizer=prenormalizer, softmax_rescale=softmax_rescale
    )
    package = StreamPackage(torch_predict(graph), description(model, context))
    feats = utterance(LENGTHS[1], seed=3)
    torch.testing.assert_close(
        stream_package_logits(package, feats), stream_logits(model, feats, context),
        atol=GRAPH_TOLERANCE, rtol=0,
    )


def test_weights_are_copied_not_shared() -> None:
    model, context = make_model("c4-l8-chunk")
    graph = build_stream_model(model, context)
    training_storage = {p.untyped_storage().data_ptr() for p in model.state_dict().values()}
    graph_storage = {p.untyped_storage().data_ptr() for p in graph.state_dict().values()}
    assert not training_storage & graph_storage


# ---------------------------------------------------------------------------------------------
# The description and the host loop


def test_description_shapes_are_the_graph_shapes() -> None:
    model, context = make_model("c8-l16-causal")
    streaming = description(model, context)
    graph = build_stream_model(model, context)
    inputs = {name: np.zeros(shape, np.float32) for name, shape in streaming["inputs"].items()}
    outputs = torch_predict(graph)(inputs)
    assert {name: list(out.shape) for name, out in outputs.items()} == streaming["outputs"]
    for name, cache in streaming["caches"].items():
        assert streaming["inputs"][name] == cache["shape"] == streaming["outputs"][cache["output"]]
    # The layout every runner relies on: 4C feature frames in, C logits out, L cache slots.
    assert streaming["inputs"]["features"] == [1, N_MELS, 1, 4 * context.chunk_frames]
    assert streaming["outputs"]["logits"] == [1, VOCAB + 1, 1, context.chunk_frames]
    stacked = len(model.blocks) * model.d_model  # layers stacked along channels
    assert streaming["caches"]["key_cache"]["shape"] == [1, stacked, 1, context.left_frames]
    assert streaming["caches"]["conv_cache"]["shape"][-1] == model.conv_cache_frames


def test_description_latency_is_chunk_plus_front_end_lookahead() -> None:
    model, context = make_model("c4-l8-chunk")
    features = streaming_features("none")
    streaming = stream_description(model, context, features)
    settings = features.settings
    lookahead = StreamingLogMel(features).lookahead_samples / settings.sample_rate
    chunk_seconds = 4 * context.chunk_frames * settings.hop_length / settings.sample_rate
    assert streaming["chunk_seconds"] == pytest.approx(chunk_seconds)
    assert streaming["algorithmic_latency_seconds"] == pytest.approx(chunk_seconds + lookahead)
    assert streaming["left_seconds"] == pytest.approx(2 * chunk_seconds)  # L = 2C


def test_utterance_normalisation_cannot_stream() -> None:
    model, context = make_model("c4-l8-chunk")
    with pytest.raises(ValueError, match="normalize=utterance"):
        stream_description(model, context, streaming_features("utterance"))


@pytest.mark.parametrize(
    ("conv_context", "left", "message"),
    [("symmetric", 8, "conv_context=symmetric"), ("chunk", 0, "left_frames"),
     ("chunk", -1, "left_frames")],
)
def test_unstreamable_models_are_refused(conv_context: str, left: int, message: str) -> None:
    model = ConformerCTC(VOCAB, feat_dim=N_MELS, d_model=32, num_heads=NUM_HEADS, num_layers=1,
                         conv_kernel_size=7, conv_context=conv_context).eval()
    with pytest.raises(ValueError, match=message):
        build_stream_model(model, ChunkContext(4, left))


def test_step_rejects_a_chunk_that_does_not_fit() -> None:
    model, context = make_model("c4-l8-chunk")
    package = StreamPackage(torch_predict(build_stream_model(model, context)),
                            description(model, context))
    caches = package.initial_caches()
    with pytest.raises(ValueError, match="1 to 16 frames"):
        package.step(torch.zeros(17, N_MELS), caches)
    with pytest.raises(ValueError, match=f"{N_MELS} mels"):
        package.step(torch.zeros(16, N_MELS + 1), caches)


# ---------------------------------------------------------------------------------------------
# Step 3: the saved package, run by the MIL executor


# The first two settings are converted in FP32 (the conversion checked alone); the third as
# export.py ships it, FP16 (its weights then carry FP16 rounding even in the executor's fp32
# mode). Three conversions in all, one per setting.
PRECISIONS = {"c4-l8-chunk": "fp32", "c8-l16-causal": "fp32", "c16-l64-chunk": "fp16"}


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stream")
    return {
        setting: convert_stream_to_coreml(
            build_stream_model(*make_model(setting)),
            folder / setting / "stream.mlpackage",
            precision=precision,
        )
        for setting, precision in PRECISIONS.items()
    }


def executor_package(package: Path, model: ConformerCTC, context: ChunkContext) -> StreamPackage:
    executor = PackageExecutor(package, mode="fp32")
    return StreamPackage(lambda inputs: executor(**inputs), description(model, context))


def package_tolerance(setting: str, expected: torch.Tensor) -> float:
    if PRECISIONS[setting] == "fp32":
        return FP32_PACKAGE_TOLERANCE
    return FP16_WEIGHTS_TOLERANCE * float(expected.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS)
def test_package_equals_chunk_loop(setting: str, packages: dict[str, Path]) -> None:
    model, context = make_model(setting)
    package = executor_package(packages[setting], model, context)
    for seed, frames in enumerate(LENGTHS):
        feats = utterance(frames, seed)
        expected = stream_logits(model, feats, context)
        logits = stream_package_logits(package, feats)
        torch.testing.assert_close(
            logits, expected, atol=package_tolerance(setting, expected), rtol=0
        )


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS)
def test_package_next_caches_feed_back(setting: str, packages: dict[str, Path]) -> None:
    model, context = make_model(setting)
    package = executor_package(packages[setting], model, context)
    feats = utterance(5 * context.feature_frames - 3, seed=11)  # 5 chunks, the last one short
    atol = package_tolerance(setting, stream_logits(model, feats, context))
    assert assert_caches_follow_chunk_loop(package, model, context, feats, atol) == 5


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS)
def test_utterances_streamed_side_by_side_give_each_its_own_logits_bit_for_bit(
    setting: str, packages: dict[str, Path]
) -> None:
    # The parity gate streams a batch of utterances through one executor call per chunk
    # (export/workers.py); each must get exactly what it gets streamed alone, in the gate's
    # own mode, whatever its length (LENGTHS: utterances leave the batch as they end).
    model, context = make_model(setting)
    executor = PackageExecutor(packages[setting], mode="fp16-strict")
    assert executor.batch_barrier is None  # every op keeps the rows apart
    package = StreamPackage(lambda inputs: executor(**inputs), description(model, context))
    feats = [utterance(frames, seed) for seed, frames in enumerate(LENGTHS)]
    side_by_side = stream_package_logits_of(package, feats)
    for alone, together in zip(feats, side_by_side, strict=True):
        torch.testing.assert_close(together, stream_package_logits(package, alone),
                                   rtol=0, atol=0)


@pytest.mark.slow
def test_layout_ops_do_not_grow_with_depth(packages: dict[str, Path]) -> None:
    histograms = {
        SETTINGS[setting][-1]: mil_op_histogram(package) for setting, package in packages.items()
    }
    assert set(histograms) == {2, 3}
    # Reshapes only outside the blocks (subsampling, key bias); one transpose per block (the
    # keys'); attention as einsum (scores and outputs per head), linears as convs.
    assert histograms[2].get("reshape", 0) == histograms[3].get("reshape", 0)
    for layers, histogram in histograms.items():
        assert histogram.get("transpose", 0) == layers
        assert histogram.get("einsum", 0) == 2 * NUM_HEADS * layers
        assert "matmul" not in histogram and "linear" not in histogram


@pytest.mark.slow
def test_package_shapes_are_fixed_and_described(packages: dict[str, Path]) -> None:
    # Every chunk costs the same: each input and output has one fixed shape, the description's.
    for setting, package in packages.items():
        streaming = description(*make_model(setting))
        spec, _ = load_program(package)
        for features, described in (
            (spec.description.input, streaming["inputs"]),
            (spec.description.output, streaming["outputs"]),
        ):
            array_types = {feature.name: feature.type.multiArrayType for feature in features}
            assert {name: list(t.shape) for name, t in array_types.items()} == described
            for array_type in array_types.values():
                assert array_type.WhichOneof("ShapeFlexibility") is None
