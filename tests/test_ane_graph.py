"""The Neural Engine graph equals the training graph in FP32 and converts to a compact program."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import randomize_norms
from edge_conformer.export import (
    build_ane_model,
    convert_to_coreml,
    mil_op_histogram,
)
from edge_conformer.model import ConformerCTC
from edge_conformer.model.subsampling import output_frames

WINDOW = 64  # feature frames; 16 frames after 4x subsampling
N_MELS = 80
VOCAB = 16
NUM_HEADS = 4
TOLERANCE = 1e-4  # max abs logit difference, FP32 vs FP32
VARIANTS = [
    (subsampling, norm) for subsampling in ("regular", "depthwise") for norm in ("l2", "mad")
]
# A full window and two padded ones: 41 valid frames leave an odd count (21) after the first
# stride-2 conv, which the encoder-rate count (11) does not determine; 39 an even one (20).
VALID_FRAMES = [WINDOW, 41, 39]


def tiny_model(
    subsampling: str, norm: str, num_layers: int = 2, conv_context: str = "symmetric"
) -> ConformerCTC:
    """A randomly initialised eval-mode model whose norms and BatchNorms are not identities."""
    torch.manual_seed(0)
    model = ConformerCTC(
        vocab_size=VOCAB, feat_dim=N_MELS, d_model=64, num_heads=NUM_HEADS,
        num_layers=num_layers, conv_kernel_size=7, subsampling=subsampling, norm=norm,
        dropout=0.0, conv_context=conv_context,
    )
    randomize_norms(model)
    return model.eval()


def valid_logits(
    model: ConformerCTC, ane_model: nn.Module, valid_frames: int, padding_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ANE, training) logits of the valid frames of one window, both (frames, vocab + 1).

    The training model gets the window zero padded, as its batches are; the ANE graph gets the
    tail filled with `padding_value`.
    """
    features = torch.randn(1, WINDOW, N_MELS, generator=torch.Generator().manual_seed(1))
    features[:, valid_frames:] = 0.0
    ane_features = features.clone()
    ane_features[:, valid_frames:] = padding_value
    feature_mask = (torch.arange(WINDOW) < valid_frames).float().reshape(1, 1, 1, WINDOW)
    with torch.no_grad():
        expected, lengths = model(features, torch.tensor([valid_frames]))
        logits = ane_model(ane_features.transpose(1, 2).unsqueeze(2), feature_mask)
    num_valid = int(lengths)
    assert logits.shape == (1, VOCAB + 1, 1, output_frames(WINDOW))
    return logits[0, :, 0, :num_valid].T, expected[0, :num_valid]


@pytest.mark.parametrize("valid_frames", VALID_FRAMES)
@pytest.mark.parametrize(("subsampling", "norm"), VARIANTS)
def test_ane_graph_matches_training_graph(subsampling: str, norm: str, valid_frames: int) -> None:
    model = tiny_model(subsampling, norm)
    ane_model = build_ane_model(model, window_frames=WINDOW)
    logits, expected = valid_logits(model, ane_model, valid_frames)
    assert (logits - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("valid_frames", [WINDOW, 41])
@pytest.mark.parametrize("conv_context", ["causal", "chunk"])
def test_streamable_conv_contexts_export_at_full_context(
    conv_context: str, valid_frames: int
) -> None:
    # The offline window is one chunk: `chunk` is the symmetric conv there, `causal` must stay
    # causal (the training module's depthwise.padding is symmetric in every context).
    model = tiny_model("depthwise", "mad", conv_context=conv_context)
    ane_model = build_ane_model(model, window_frames=WINDOW)
    logits, expected = valid_logits(model, ane_model, valid_frames)
    assert (logits - expected).abs().max() <= TOLERANCE


def test_padding_values_do_not_reach_the_valid_frames() -> None:
    model = tiny_model("depthwise", "mad")
    ane_model = build_ane_model(model, window_frames=WINDOW)
    logits, expected = valid_logits(model, ane_model, valid_frames=41, padding_value=-16.0)
    assert (logits - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("softmax_rescale", [True, False])
@pytest.mark.parametrize("prenormalizer", ["none", "maxabs", "mad"])
@pytest.mark.parametrize(("subsampling", "norm"), VARIANTS)
def test_numerics_options_keep_the_function(
    subsampling: str, norm: str, prenormalizer: str, softmax_rescale: bool
) -> None:
    model = tiny_model(subsampling, norm)
    ane_model = build_ane_model(
        model, window_frames=WINDOW, prenormalizer=prenormalizer, softmax_rescale=softmax_rescale
    )
    logits, expected = valid_logits(model, ane_model, valid_frames=41)
    assert (logits - expected).abs().max() <= TOLERANCE


def test_weights_are_copied_not_shared() -> None:
    model = tiny_model("depthwise", "mad")
    ane_model = build_ane_model(model, window_frames=WINDOW)
    training_storage = {p.untyped_storage().data_ptr() for p in model.state_dict().values()}
    ane_storage = {p.untyped_storage().data_ptr() for p in ane_model.state_dict().values()}
    assert not training_storage & ane_storage


def test_convert_rejects_a_path_that_is_not_a_package(tmp_path: Path) -> None:
    ane_model = build_ane_model(tiny_model("depthwise", "mad"), window_frames=WINDOW)
    with pytest.raises(ValueError, match="mlpackage"):
        convert_to_coreml(
            ane_model, window_frames=WINDOW, n_mels=N_MELS, out_path=tmp_path / "model.mlmodel"
        )


@pytest.fixture(scope="module")
def op_histograms(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, int]]:
    """MIL op histograms of FP16 packages converted from 2- and 4-layer models."""
    histograms = {}
    for num_layers in (2, 4):
        model = tiny_model("depthwise", "mad", num_layers=num_layers)
        package = convert_to_coreml(
            build_ane_model(model, window_frames=WINDOW),
            window_frames=WINDOW,
            n_mels=N_MELS,
            out_path=tmp_path_factory.mktemp("ane") / "model.mlpackage",
        )
        histograms[num_layers] = mil_op_histogram(package)
    return histograms


@pytest.mark.slow
def test_layout_ops_do_not_grow_with_depth(op_histograms: dict[int, dict[str, int]]) -> None:
    # Reshapes live only in the front end; the one transpose per block is the keys' (see
    # AneSelfAttention), so transposes are exactly one per layer.
    assert op_histograms[2].get("reshape", 0) == op_histograms[4].get("reshape", 0)
    for num_layers, histogram in op_histograms.items():
        assert histogram.get("transpose", 0) == num_layers


@pytest.mark.slow
def test_attention_is_einsum_and_linears_are_convs(
    op_histograms: dict[int, dict[str, int]],
) -> None:
    for num_layers, histogram in op_histograms.items():
        assert histogram.get("einsum", 0) == 2 * NUM_HEADS * num_layers  # scores and outputs
        assert "matmul" not in histogram
        assert "linear" not in histogram
