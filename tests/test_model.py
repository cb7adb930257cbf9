import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO
from edge_conformer.model import ConformerCTC, build_model, count_parameters
from edge_conformer.model.subsampling import subsampled_lengths

VARIANTS = [(s, n) for s in ("regular", "depthwise") for n in ("l2", "mad")]


def model_config(size: str, *overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"model={size}", *overrides]).model


# NeMo Conformer-CTC parameter counts with a 256-token vocabulary (NeMo's model cards).
@pytest.mark.parametrize("size,nemo_millions", [("s", 13.0), ("m", 30.0), ("l", 121.0)])
@pytest.mark.parametrize("subsampling", ["regular", "depthwise"])
def test_sizes_match_nemo_parameter_counts(size, nemo_millions, subsampling):
    with torch.device("meta"):
        model = build_model(model_config(size, f"model.subsampling={subsampling}"), 256, 80)
    millions = count_parameters(model) / 1e6
    # Ours has rotary positions (no relative-position projections) -> a few % below NeMo.
    assert nemo_millions * 0.92 <= millions <= nemo_millions * 1.02, millions


def test_depthwise_subsampling_is_cheaper():
    # Both second convolutions run at the same resolution: weights are proportional to MACs.
    regular = build_model(model_config("s", "model.subsampling=regular"), 256, 80)
    depthwise = build_model(model_config("s", "model.subsampling=depthwise"), 256, 80)
    regular_macs = count_parameters(regular.subsampling.conv2)
    depthwise_macs = count_parameters(depthwise.subsampling.conv2)
    assert depthwise_macs < regular_macs / 8


@pytest.mark.parametrize("subsampling,norm", VARIANTS)
def test_forward_shapes_and_padding_invariance(subsampling, norm):
    torch.manual_seed(0)
    model = ConformerCTC(10, d_model=32, num_heads=2, num_layers=2, conv_kernel_size=7,
                         subsampling=subsampling, norm=norm).eval()
    long, short = torch.randn(1, 123, 80), torch.randn(1, 61, 80)
    padded = torch.cat([long, torch.nn.functional.pad(short, (0, 0, 0, 62))])
    logits, lengths = model(padded, torch.tensor([123, 61]))
    assert logits.shape == (2, 31, 11)
    assert lengths.tolist() == [31, 16]
    alone, _ = model(short, torch.tensor([61]))
    # Padding must not leak into the valid frames (attention masks, conv zeroing).
    torch.testing.assert_close(logits[1, :16], alone[0], atol=1e-5, rtol=1e-5)


def test_subsampled_lengths_match_convolutions():
    model = ConformerCTC(10, d_model=32, num_heads=2, num_layers=1)
    for frames in (1, 2, 7, 8, 9, 100, 101):
        out, _ = model.subsampling(torch.randn(1, frames, 80), torch.tensor([frames]))
        assert out.shape[1] == int(subsampled_lengths(torch.tensor([frames]))[0])


def test_unknown_variant_names_are_rejected():
    with pytest.raises(ValueError, match="model.norm"):
        ConformerCTC(10, d_model=32, num_heads=2, num_layers=1, norm="rms")
    with pytest.raises(ValueError, match="model.subsampling"):
        ConformerCTC(10, d_model=32, num_heads=2, num_layers=1, subsampling="vgg")
    with pytest.raises(ValueError, match="model.conv_context"):
        ConformerCTC(10, d_model=32, num_heads=2, num_layers=1, conv_context="future")


def test_model_configs_build_with_their_streaming_block():
    """conf/model's `streaming` block configures training, not the network's arguments."""
    cfg = model_config("xs", "model.conv_context=chunk", "model.streaming.enabled=true")
    model = build_model(cfg, 32, 80)
    assert model.conv_context == "chunk" and model.conv_cache_frames == 15
