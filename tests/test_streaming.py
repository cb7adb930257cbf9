"""Streaming: chunk masks, convolution contexts, the chunk loop with caches, chunk draws.

Proof-ladder step 1: the PyTorch chunk loop (forward_chunk over a StreamingState) computes
what the masked full forward computes, in FP32, on ragged batches.
"""

from __future__ import annotations

import pytest
import torch

from edge_conformer.model import ConformerCTC
from edge_conformer.model.modules import ConvolutionModule
from edge_conformer.model.streaming import (
    ChunkContext,
    StreamingState,
    chunk_attention_mask,
    stream_logits,
)
from edge_conformer.model.subsampling import subsampled_lengths
from edge_conformer.training.chunking import DynamicChunks

LENGTHS = [203, 150, 97, 61]  # feature frames: none a multiple of 4C, one under one chunk
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which on a
    busy machine made the chunk loop (hundreds of small ops) 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(conv_context: str = "chunk", subsampling: str = "depthwise",
               norm: str = "l2") -> ConformerCTC:
    """A small eval-mode model with random weights and random BatchNorm statistics.

    Kernel 15: the conv cache (7 or 14 frames) spans several of the smallest chunks."""
    torch.manual_seed(0)
    model = ConformerCTC(12, d_model=32, num_heads=2, num_layers=2, conv_kernel_size=15,
                         conv_context=conv_context, subsampling=subsampling, norm=norm)
    for block in model.blocks:
        block.conv.batch_norm.running_mean.normal_()
        block.conv.batch_norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def ragged_batch(lengths: list[int] = LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features, zero-padded past each length (as the DataModule pads them)."""
    lengths_t = torch.tensor(lengths)
    frames = torch.arange(max(lengths))
    feats = torch.randn(len(lengths), max(lengths), 80)
    return feats * (frames[None, :, None] < lengths_t[:, None, None]), lengths_t


def valid_frames_of(logits: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return [row[:n] for row, n in zip(logits, subsampled_lengths(lengths))]


SETTINGS = [(4, 8, "chunk"), (8, 16, "causal"), (16, 64, "chunk"), (4, -1, "chunk"),
            (1, 0, "chunk")]


@pytest.mark.parametrize("subsampling,norm", [("depthwise", "l2"), ("regular", "mad")])
@pytest.mark.parametrize("chunk,left,conv_context", SETTINGS)
def test_chunk_loop_equals_masked_forward(chunk, left, conv_context, subsampling, norm):
    model = make_model(conv_context, subsampling, norm)
    feats, lengths = ragged_batch()
    context = ChunkContext(chunk, left)
    with torch.no_grad():
        masked, _ = model(feats, lengths, context)
        offline, _ = model(feats, lengths)
    streamed = stream_logits(model, feats, context, lengths)
    assert streamed.shape == masked.shape
    for got, want in zip(valid_frames_of(streamed, lengths), valid_frames_of(masked, lengths)):
        torch.testing.assert_close(got, want, **TOLERANCE)
    # The context matters (the longest utterance spans several chunks): a loop that saw the
    # whole utterance would fail the comparison above.
    assert (masked[0] - offline[0]).abs().max() > 1e-3
    # One utterance alone, (T, n_mels), gives its row of the batch.
    alone = stream_logits(model, feats[3, : LENGTHS[3]], context)
    torch.testing.assert_close(alone, valid_frames_of(masked, lengths)[3], **TOLERANCE)


def test_full_context_is_the_offline_model():
    feats, lengths = ragged_batch()
    frames = int(subsampled_lengths(lengths).max())
    symmetric = make_model("symmetric")
    chunked = make_model("chunk")
    chunked.load_state_dict(symmetric.state_dict())
    with torch.no_grad():
        offline, _ = symmetric(feats, lengths)
        for model in (symmetric, chunked):
            for context in (ChunkContext(frames, -1), ChunkContext(4 * frames, -1)):
                logits, _ = model(feats, lengths, context)
                assert torch.equal(logits, offline)
            assert torch.equal(model(feats, lengths)[0], offline)


def test_full_context_mask_is_the_key_padding_mask():
    """One chunk spanning T with left 0 takes the general mask path: it must allow exactly
    the valid keys, for every query (padded ones too)."""
    padding = torch.arange(9)[None, :] >= torch.tensor([9, 5, 1])[:, None]
    mask = chunk_attention_mask(padding, ChunkContext(9, 0))
    assert mask.shape == (3, 1, 9, 9)
    assert torch.equal(mask, (~padding)[:, None, None, :].expand(-1, -1, 9, -1))
    assert torch.equal(chunk_attention_mask(padding, None), (~padding)[:, None, None, :])


@pytest.mark.parametrize("chunk,left", [(1, 0), (2, 4), (3, -1), (4, 0), (4, 8)])
def test_chunk_mask_follows_its_definition(chunk, left):
    lengths = [11, 6, 2]
    padding = torch.arange(11)[None, :] >= torch.tensor(lengths)[:, None]
    mask = chunk_attention_mask(padding, ChunkContext(chunk, left))[:, 0]
    for b, length in enumerate(lengths):
        for i in range(11):
            c = i // chunk
            want = [j < length and j // chunk <= c and (left < 0 or j >= c * chunk - left)
                    for j in range(11)]
            if not any(want):  # a padded query left without keys sees its own frame
                assert i >= length
                want[i] = True
            assert mask[b, i].tolist() == want, (b, i)


@pytest.mark.parametrize("chunk", [1, 3, 4, 16, 40])
def test_chunk_conv_is_symmetric_with_the_future_cut_at_the_chunk_end(chunk):
    torch.manual_seed(0)
    conv = ConvolutionModule(8, 15, "chunk").eval()
    x = torch.randn(2, 8, 37)
    got = conv._chunked_depthwise(x, chunk)
    for start in range(0, 37, chunk):
        cut = x.clone()
        cut[..., start + chunk :] = 0.0  # the frames after this chunk
        want = conv.depthwise(cut)[..., start : start + chunk]
        torch.testing.assert_close(got[..., start : start + chunk], want, **TOLERANCE)


def test_causal_conv_ignores_the_future():
    torch.manual_seed(0)
    conv = ConvolutionModule(8, 15, "causal").eval()
    x, padding = torch.randn(1, 30, 8), torch.zeros(1, 30, dtype=torch.bool)
    changed = x.clone()
    changed[:, 20:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(conv(x, padding)[:, :20], conv(changed, padding)[:, :20])


@pytest.mark.parametrize("conv_context", ["symmetric", "chunk", "causal"])
@pytest.mark.parametrize("chunk,left", [(1, 0), (4, 0), (4, 8), (16, -1)])
def test_padded_rows_stay_finite_and_leak_nothing(conv_context, chunk, left):
    model = make_model(conv_context)
    context = ChunkContext(chunk, left)
    feats, lengths = ragged_batch([203, 25])  # a short utterance in a long padded batch
    # Every query row, padded ones included, has a key: SDPA kernels that return NaN (rather
    # than zeros, as the CPU ones do) for a row of masked scores never see one.
    padding = torch.arange(51)[None, :] >= subsampled_lengths(lengths)[:, None]
    assert chunk_attention_mask(padding, context).any(dim=-1).all()
    model.train()
    logits, _ = model(feats, lengths, context)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        batched, _ = model(feats, lengths, context)
        alone, _ = model(feats[1:, :25], lengths[1:], context)
    torch.testing.assert_close(batched[1, : alone.shape[1]], alone[0], **TOLERANCE)


def test_state_shapes_do_not_grow_with_the_stream():
    model = make_model("chunk")
    context = ChunkContext(4, 8)
    state = StreamingState.initial(model, context, batch=2)
    shapes = {name: getattr(state, name).shape for name in
              ("features", "half_rate", "keys", "values", "key_valid", "conv")}
    assert shapes["keys"] == (2, 2, 8, 32) and shapes["conv"] == (2, 2, 32, 7)
    with torch.no_grad():
        for _ in range(6):
            logits, state = model.forward_chunk(torch.randn(2, 16, 80), state)
            assert logits.shape == (2, 4, 13)
            assert {name: getattr(state, name).shape for name in shapes} == shapes
    assert state.key_valid.all()  # after two chunks of 4 the 8 slots are filled


def test_forward_chunk_refuses_what_cannot_stream():
    model = make_model("symmetric")
    state = StreamingState.initial(model, ChunkContext(4, 8))
    with pytest.raises(ValueError, match="model.conv_context"):
        model.forward_chunk(torch.randn(1, 16, 80), state)
    with pytest.raises(ValueError, match="model.conv_context"):
        stream_logits(model, torch.randn(50, 80), ChunkContext(4, 8))
    streamable = make_model("chunk")
    with pytest.raises(ValueError, match="16 feature frames, got 12"):
        streamable.forward_chunk(torch.randn(1, 12, 80), state)
    with pytest.raises(ValueError, match="eval"):
        streamable.train().forward_chunk(torch.randn(1, 16, 80), state)


def test_chunk_context_rejects_bad_geometry():
    with pytest.raises(ValueError, match="multiple of chunk_frames"):
        ChunkContext(8, 12)
    with pytest.raises(ValueError, match="chunk_frames must be at least 1"):
        ChunkContext(0, -1)


def test_chunk_draws_are_seeded_by_seed_and_step():
    chunks = DynamicChunks(enabled=True)
    global_rng = torch.get_rng_state()
    draws = [chunks.draw(seed=3, step=step) for step in range(2000)]
    assert torch.equal(torch.get_rng_state(), global_rng)  # dropout's RNG is untouched
    assert draws == [chunks.draw(seed=3, step=step) for step in range(2000)]
    assert draws != [chunks.draw(seed=4, step=step) for step in range(2000)]
    full = sum(draw is None for draw in draws) / len(draws)
    assert 0.45 < full < 0.55
    drawn = {(d.chunk_frames, d.left_frames) for d in draws if d is not None}
    assert drawn == {(c, left) for c in (4, 8, 16, 32) for left in (32, 64, -1)}
    always = DynamicChunks(enabled=True, full_context_share=0.0)
    assert all(always.draw(0, step) is not None for step in range(100))


def test_chunks_from_step_trains_full_context_before_it_and_draws_as_before_after():
    late = DynamicChunks(enabled=True, full_context_share=0.0, chunks_from_step=300)
    assert all(late.draw(0, step) is None for step in range(300))
    usual = DynamicChunks(enabled=True, full_context_share=0.0)
    assert [late.draw(0, step) for step in range(300, 400)] == [
        usual.draw(0, step) for step in range(300, 400)
    ]
    with pytest.raises(ValueError, match="model.streaming.chunks_from_step must be >= 0"):
        DynamicChunks(enabled=True, chunks_from_step=-1)


def test_drawn_left_rounds_down_to_whole_chunks():
    def lefts(left: int) -> set[int]:
        chunks = DynamicChunks(enabled=True, full_context_share=0.0, chunk_sizes=(24,),
                               left_contexts=(left,))
        return {chunks.draw(0, step).left_frames for step in range(20)}

    assert lefts(64) == {48}
    assert lefts(16) == {24}  # at least one chunk
    assert lefts(-1) == {-1}


def test_streaming_config_errors_name_the_knob():
    with pytest.raises(ValueError, match="model.streaming: unknown keys"):
        DynamicChunks.from_config({"enabled": True, "chunk_size": 4})
    with pytest.raises(ValueError, match="model.streaming.eval_chunk/eval_left"):
        DynamicChunks.from_config({"eval_chunk": 16, "eval_left": 40})
    loaded = DynamicChunks.from_config({"enabled": True, "chunk_sizes": [2, 6]})
    assert loaded.chunk_sizes == (2, 6) and loaded.eval_context == ChunkContext(16, 64)
    assert DynamicChunks.from_config(None) == DynamicChunks()
