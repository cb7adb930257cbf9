"""Conformer-CTC: subsampling front, Conformer blocks, linear CTC head."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from edge_conformer.model.attention import RotarySelfAttention
from edge_conformer.model.modules import ConvolutionModule, FeedForward
from edge_conformer.model.norms import make_norm
from edge_conformer.model.streaming import (
    ChunkContext,
    StreamingState,
    chunk_attention_mask,
    keep_last,
)
from edge_conformer.model.subsampling import ConvSubsampling, subsampled_lengths

Branch = Callable[[torch.Tensor], torch.Tensor]


class ConformerBlock(nn.Module):
    """Macaron FFN/2 -> MHSA -> Conv -> FFN/2 -> norm, each branch pre-normalised and residual."""

    def __init__(
        self, d_model: int, num_heads: int, ffn_dim: int, kernel_size: int, norm: str,
        dropout: float, conv_context: str = "symmetric",
    ) -> None:
        super().__init__()
        self.norm_ff1 = make_norm(norm, d_model)
        self.ff1 = FeedForward(d_model, ffn_dim, dropout)
        self.norm_attn = make_norm(norm, d_model)
        self.attn = RotarySelfAttention(d_model, num_heads, dropout)
        self.norm_conv = make_norm(norm, d_model)
        self.conv = ConvolutionModule(d_model, kernel_size, conv_context)
        self.norm_ff2 = make_norm(norm, d_model)
        self.ff2 = FeedForward(d_model, ffn_dim, dropout)
        self.norm_out = make_norm(norm, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, padding: torch.Tensor, attn_mask: torch.Tensor,
        chunk_frames: int | None = None,
    ) -> torch.Tensor:
        """x (B, T, C); padding (B, T); attn_mask (True = attend) and chunk_frames (None: one
        chunk) from the model's ChunkContext."""
        return self._branches(
            x,
            attend=lambda h: self.attn(h, attn_mask),
            convolve=lambda h: self.conv(h, padding, chunk_frames),
        )

    def forward_chunk(
        self, x: torch.Tensor, padding: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        key_valid: torch.Tensor, conv_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One chunk (B, C, d) with this layer's caches (see `StreamingState`): returns its
        outputs and the layer's (window keys, window values, conv cache)."""
        caches: dict[str, torch.Tensor] = {}

        def attend(h: torch.Tensor) -> torch.Tensor:
            out, caches["keys"], caches["values"] = self.attn.forward_chunk(
                h, keys, values, key_valid
            )
            return out

        def convolve(h: torch.Tensor) -> torch.Tensor:
            out, caches["conv"] = self.conv.forward_chunk(h, padding, conv_cache)
            return out

        x = self._branches(x, attend, convolve)
        return x, (caches["keys"], caches["values"], caches["conv"])

    def _branches(self, x: torch.Tensor, attend: Branch, convolve: Branch) -> torch.Tensor:
        # add(alpha=0.5) is x + 0.5 * branch in one op (the halving is exact in floating point).
        x = torch.add(x, self.dropout(self.ff1(self.norm_ff1(x))), alpha=0.5)
        x = x + self.dropout(attend(self.norm_attn(x)))
        x = x + self.dropout(convolve(self.norm_conv(x)))
        x = torch.add(x, self.dropout(self.ff2(self.norm_ff2(x))), alpha=0.5)
        return self.norm_out(x)


# The share of frames CTC labels blank: at 40 ms frames speech carries a few tokens a second.
BLANK_PRIOR = 0.9


def init_blank_prior(head: nn.Linear) -> None:
    """Start the CTC head at the blank prior: p(blank) = BLANK_PRIOR, the rest shared evenly.

    From an even start, CTC's first and easiest lesson is that most frames are blank; the
    encoder learns it too, as a large constant added to every frame, which then drowns the
    frames' differences, and the model emits only blanks for hundreds of steps (the blank
    plateau). With the prior in the head's bias from the start, the gradients go to what
    tells frames apart (recipes/digits/README.md, "Time to accuracy").
    """
    others = head.out_features - 1
    with torch.no_grad():
        head.bias.zero_()
        head.bias[0] = math.log(BLANK_PRIOR * others / (1 - BLANK_PRIOR))


class ConformerCTC(nn.Module):
    """Log-mel features (B, T, F) -> CTC logits (B, T/4, vocab_size + 1); blank is index 0."""

    def __init__(
        self,
        vocab_size: int,
        feat_dim: int = 80,
        d_model: int = 176,
        num_heads: int = 4,
        num_layers: int = 16,
        ffn_mult: int = 4,
        conv_kernel_size: int = 31,
        conv_context: str = "symmetric",
        subsampling: str = "depthwise",
        subsampling_channels: int | None = None,
        norm: str = "l2",
        dropout: float = 0.1,
        name: str = "custom",
    ) -> None:
        super().__init__()
        self.name = name  # the size preset (xs/s/m/l), kept for reports
        self.d_model = d_model
        self.subsampling = ConvSubsampling(
            subsampling, feat_dim, d_model, subsampling_channels or d_model
        )
        self.blocks = nn.ModuleList(
            ConformerBlock(
                d_model, num_heads, ffn_mult * d_model, conv_kernel_size, norm, dropout,
                conv_context,
            )
            for _ in range(num_layers)
        )
        self.head = nn.Linear(d_model, vocab_size + 1)
        init_blank_prior(self.head)

    @property
    def conv_context(self) -> str:
        return self.blocks[0].conv.context

    @property
    def conv_cache_frames(self) -> int:
        """Past depthwise-conv inputs per layer a chunk loop carries."""
        return self.blocks[0].conv.cache_frames

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, context: ChunkContext | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and their lengths. `context` None: full context (the offline model); a
        ChunkContext: the masked full forward, what the chunk loop computes (streaming.py)."""
        x, out_lengths = self.subsampling(feats, lengths)
        frames = torch.arange(x.shape[1], device=x.device)
        padding = frames[None, :] >= out_lengths[:, None]
        attn_mask = chunk_attention_mask(padding, context)
        chunk_frames = context.chunk_frames if context is not None else None
        for block in self.blocks:
            x = block(x, padding, attn_mask, chunk_frames)
        return self.head(x), out_lengths

    def forward_chunk(
        self, feats: torch.Tensor, state: StreamingState, valid_frames: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, StreamingState]:
        """One chunk of a stream: feats (B, 4C, n_mels) -> logits (B, C, vocab + 1), new state.

        `valid_frames` (B,): how many of the chunk's feature frames belong to the stream (all
        by default; fewer in a stream's last chunk, padded to 4C). Eval mode only.
        """
        self._check_streamable(feats, state)
        if valid_frames is None:
            valid_frames = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
        x, last_feature, last_half_rate = self.subsampling.forward_chunk(
            feats, valid_frames, state.features, state.half_rate
        )
        frames = torch.arange(x.shape[1], device=x.device)
        padding = frames[None, :] >= subsampled_lengths(valid_frames)[:, None]
        key_valid = torch.cat([state.key_valid, ~padding], dim=1)
        layer_caches = []
        for block, keys, values, conv in zip(self.blocks, state.keys, state.values, state.conv):
            x, caches = block.forward_chunk(x, padding, keys, values, key_valid, conv)
            layer_caches.append(caches)
        keys, values, conv = (torch.stack(per_layer) for per_layer in zip(*layer_caches))
        left = state.context.left_frames
        new_state = StreamingState(
            context=state.context,
            features=last_feature,
            half_rate=last_half_rate,
            keys=keep_last(keys, left, dim=2),
            values=keep_last(values, left, dim=2),
            key_valid=keep_last(key_valid, left, dim=1),
            conv=conv,
        )
        return self.head(x), new_state

    def _check_streamable(self, feats: torch.Tensor, state: StreamingState) -> None:
        if self.conv_context == "symmetric":
            raise ValueError(
                "forward_chunk: model.conv_context=symmetric is not streamable (its conv taps "
                "read the next chunk); train with model.conv_context=chunk or causal"
            )
        if self.training:
            raise ValueError("forward_chunk: call model.eval() first (BatchNorm, dropout)")
        if feats.shape[1] != state.context.feature_frames:
            raise ValueError(
                f"forward_chunk: a chunk of {state.context.chunk_frames} encoder frames takes "
                f"{state.context.feature_frames} feature frames, got {feats.shape[1]}"
            )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
