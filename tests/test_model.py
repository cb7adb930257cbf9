import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from conftest import REPO, randomize_norms
from edge_conformer.model import (
    ChunkContext,
    ConformerBlock,
    ConformerCTC,
    build_model,
    count_parameters,
)
from edge_conformer.model.rotary import rotary_tables
from edge_conformer.model.streaming import chunk_attention_mask
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


def textbook_branches(block, x, padding, mask):
    """The block's attention and convolution branches written plainly: three projections,
    rotate_half by concat, explicit softmax; Conv1d modules on channels-first copies. The model
    computes them in a faster layout (fused projections, channels-last convolutions)."""
    batch, frames, _ = x.shape
    attn, conv = block.attn, block.conv
    cos, sin = rotary_tables(frames, attn.head_dim)

    def heads(y):
        return y.view(batch, frames, attn.num_heads, attn.head_dim).transpose(1, 2)

    def rotate(y):
        first, second = y.chunk(2, dim=-1)
        return y * cos + torch.cat([-second, first], dim=-1) * sin

    q, k = rotate(heads(attn.q_proj(x))), rotate(heads(attn.k_proj(x)))
    scores = (q @ k.transpose(-1, -2) / attn.head_dim**0.5).masked_fill(~mask, float("-inf"))
    context = (scores.softmax(-1) @ heads(attn.v_proj(x))).transpose(1, 2).reshape(x.shape)
    h = F.glu(conv.pointwise1(x.transpose(1, 2)), dim=1).masked_fill(padding[:, None], 0.0)
    h = conv.pointwise2(F.silu(conv.batch_norm(conv.depthwise(h))))
    return attn.out_proj(context), h.transpose(1, 2)


@pytest.mark.parametrize("training", [False, True])
def test_block_branches_compute_the_textbook_conformer(training):
    """Same function and same gradients as the plain formulation, at full context and under
    a chunk mask, in eval (running statistics) and training (batch statistics) mode."""
    torch.manual_seed(0)
    block = ConformerBlock(32, 4, 128, 7, "l2", dropout=0.0).train(training)
    randomize_norms(block)
    padding = torch.arange(19)[None, :] >= torch.tensor([19, 11])[:, None]
    for context in (None, ChunkContext(4, 4)):
        mask = chunk_attention_mask(padding, context)
        x = torch.randn(2, 19, 32, requires_grad=True)
        got = (block.attn(x, mask), block.conv(x, padding))
        want = textbook_branches(block, x, padding, mask)
        for ours, plain in zip(got, want):
            torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
            grads = [torch.autograd.grad(y.square().sum(), [x, *block.parameters()],
                                         allow_unused=True) for y in (ours, plain)]
            # Absolute tolerance on the largest gradient's scale: in training the depthwise
            # bias's true gradient is zero (BatchNorm removes it), both sides hold rounding.
            scale = max(g.abs().max() for g in grads[1] if g is not None)
            for g_ours, g_plain in zip(*grads):
                if g_plain is not None:
                    torch.testing.assert_close(g_ours, g_plain, atol=1e-5 * scale, rtol=1e-4)


def subsampling_share(model: ConformerCTC, seconds: float = 10.0) -> float:
    frames = int(seconds * 100)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, frames, 80), torch.tensor([frames]))
    return sum(counter.get_flop_counts()["ConformerCTC.subsampling"].values()) / (
        counter.get_total_flops())


def test_subsampling_channels_narrow_the_front_to_the_papers_share():
    """docs/model.md: model.subsampling_channels=16 brings xs's depthwise subsampling from a
    quarter of the FLOPs (at d_model channels) to the paper's 4 %; only the front narrows."""
    default = build_model(model_config("xs", "model.subsampling_channels=null"), 256, 80).eval()
    narrow = build_model(model_config("xs", "model.subsampling_channels=16"), 256, 80).eval()
    assert narrow.subsampling.conv1.out_channels == 16 and narrow.d_model == default.d_model
    assert narrow.subsampling.out.in_features == 16 * 20  # 80 mel bins / 4
    assert subsampling_share(default) > 0.2 and subsampling_share(narrow) <= 0.04
