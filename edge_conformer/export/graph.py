"""The Neural Engine graph of a trained Conformer-CTC: same weights, channels-first layout.

`build_ane_model` reads a trained `ConformerCTC` and returns an `AneConformerCTC` computing
the same logits on one fixed-size window (fixed shapes keep Core ML on the Neural Engine):

    features      (1, n_mels, 1, T)     log-mel, channels-first, T = window_frames
    feature_mask  (1, 1, 1, T)          1.0 for the window's valid feature frames, 0.0 after
    logits        (1, vocab + 1, 1, S)  S = subsampled_lengths(T); no log-softmax: the host
                                        runs it (it can reach -inf in FP16) and the decoding

The mask comes at the feature rate because the training graph masks padding at three rates:
the features (zero padded), the first conv's output (T/2) and the encoder frames (S). The
valid count at T/2, ceil(L/2), is not a function of the count at S, ceil(L/4), but both
masks are strided slices of the feature mask: a stride-2 (kernel 3, padding 1) conv's output
t is valid iff 2t < L, i.e. iff input frame 2t is.

Outside the blocks the only layout ops are the two strided slices of the mask, two reshapes in
the subsampling and one reshape that turns the frame mask into the key-padding bias every block
shares: the converted program has 3 reshapes at any depth. Inside, each block transposes its
keys once and splits and concatenates heads along channels (see `AneSelfAttention`). The layer
rewrites live in `edge_conformer.export.layers`.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_conformer.export.layers import AneConformerBlock, AneSubsampling, linear_to_conv
from edge_conformer.model.conformer import ConformerCTC
from edge_conformer.model.subsampling import output_frames
from edge_conformer.numerics import PRENORMALIZERS

# Added to the scores of padded keys. Finite so that FP16 arithmetic stays NaN-free (-inf minus
# a -inf row maximum is NaN); 1e4 is far inside FP16's range (65504) yet large enough that
# exp(score - 1e4) is exactly 0 in any float format next to a valid key's term.
MASKED_SCORE = 1e4


def key_padding_bias(frame_mask: torch.Tensor) -> torch.Tensor:
    """(1, 1, 1, S) frame mask -> (1, S, 1, 1) additive score bias: 0 valid, -1e4 padding.

    Scores are laid out (B, keys, 1, queries), so the bias is reshaped once here, outside the
    blocks, to broadcast along the key axis.
    """
    batch, _, _, frames = frame_mask.shape
    return ((frame_mask - 1.0) * MASKED_SCORE).reshape(batch, frames, 1, 1)


class AneConformerCTC(nn.Module):
    """Channels-first Conformer-CTC for one window: (features, feature_mask) -> logits."""

    def __init__(
        self, model: ConformerCTC, *, window_frames: int, prenormalizer: str, softmax_rescale: bool
    ) -> None:
        super().__init__()
        self.window_frames = window_frames
        self.num_frames = output_frames(window_frames)
        self.subsampling = AneSubsampling(model.subsampling)
        self.blocks = nn.ModuleList(
            AneConformerBlock(block, self.num_frames, prenormalizer, softmax_rescale)
            for block in model.blocks
        )
        self.head = linear_to_conv(model.head)

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
        half_rate_mask = feature_mask[..., ::2]  # valid outputs of the first stride-2 conv
        frame_mask = half_rate_mask[..., ::2]  # valid encoder frames, (1, 1, 1, S)
        # Whatever the host put in the padded tail (zeros, a log-mel floor), the convs see
        # zeros there, as at the end of an unpadded utterance.
        x = self.subsampling(features * feature_mask, half_rate_mask)
        key_bias = key_padding_bias(frame_mask)
        for block in self.blocks:
            x = block(x, frame_mask, key_bias)
        return self.head(x)


def build_ane_model(
    model: ConformerCTC,
    *,
    prenormalizer: str = "mad",
    softmax_rescale: bool = True,
    window_frames: int,
) -> AneConformerCTC:
    """Build the Neural Engine graph from a trained model's weights (copied, never shared).

    BatchNorm is folded with its running statistics, so the result is the eval-mode model.
    `prenormalizer` ("none" | "maxabs" | "mad") is the statistic every norm divides by first;
    `softmax_rescale` selects the conditionally re-scaled softmax (False: plain softmax).
    """
    if prenormalizer not in PRENORMALIZERS:
        raise ValueError(f"prenormalizer must be one of {PRENORMALIZERS}, got {prenormalizer!r}")
    ane_model = AneConformerCTC(
        model,
        window_frames=window_frames,
        prenormalizer=prenormalizer,
        softmax_rescale=softmax_rescale,
    )
    return ane_model.eval().requires_grad_(False)
