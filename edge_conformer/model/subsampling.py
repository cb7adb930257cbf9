"""Convolutional subsampling of log-mel features by SUBSAMPLING_FACTOR (4): regular or
depthwise-separable.

`regular` is NeMo's "striding": two stride-2 3x3 Conv2d with ReLU. `depthwise` keeps the first
conv (it has one input channel, so it is already cheap) and replaces the second with a depthwise
3x3 stride-2 conv followed by a pointwise 1x1 conv, which is what cuts the subsampling share of
compute from 32.8% to 4.0% in Xu et al. (2024).
"""

from __future__ import annotations

import torch
from torch import nn

SUBSAMPLING_KINDS = ("regular", "depthwise")
# Feature frames per encoder frame: the two stride-2 convolutions, as `subsampled_lengths`
# counts them. Windows, chunks and frontend.json all take it from here.
SUBSAMPLING_FACTOR = 4


def halved_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frame counts after one (kernel 3, stride 2, padding 1) convolution: ceil(n / 2)."""
    return torch.div(lengths - 1, 2, rounding_mode="floor") + 1


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frame counts after the two stride-2 convolutions: ceil(n / SUBSAMPLING_FACTOR)."""
    return halved_lengths(halved_lengths(lengths))


def output_frames(num_frames: int) -> int:
    """Encoder frames that `num_frames` feature frames yield after subsampling."""
    return int(subsampled_lengths(torch.tensor(num_frames)))


def zero_padding_frames(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero the time steps (axis 2 of (B, C, T, F)) at or beyond each utterance's length."""
    valid = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
    return x * valid[:, None, :, None].to(x.dtype)


def conv_without_time_padding(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv` on (B, C, T, F) with its frequency padding but none along time: in a chunk loop
    the frames before the chunk come from the caches instead."""
    return nn.functional.conv2d(
        x, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups
    )


class ConvSubsampling(nn.Module):
    """(B, T, F) features -> (B, ceil(T/4), d_model) frames."""

    def __init__(self, kind: str, feat_dim: int, d_model: int, channels: int) -> None:
        super().__init__()
        if kind not in SUBSAMPLING_KINDS:
            raise ValueError(f"model.subsampling must be one of {SUBSAMPLING_KINDS}, got {kind!r}")
        self.kind = kind
        self.feat_dim = feat_dim
        self.channels = channels
        self.half_rate_freq = (feat_dim - 1) // 2 + 1  # frequency bins after the first conv
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1)
        if kind == "regular":
            self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        else:
            self.conv2 = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1, groups=channels),
                nn.Conv2d(channels, channels, kernel_size=1),
            )
        self.out = nn.Linear(channels * ((self.half_rate_freq - 1) // 2 + 1), d_model)
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation of the ReLU convolutions' weights, Glorot of the projection's.

        PyTorch's default (uniform, std 1/sqrt(3 fan_in)) shrinks the features ~30x on the
        way through: the frames the encoder then sees are mostly the biases' constant and
        barely differ from one another, and CTC sits on its blank plateau (all blanks, 100 %
        WER) for hundreds of steps (recipes/digits/README.md, "Time to accuracy").
        """
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.xavier_uniform_(self.out.weight)

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Zero what the first conv computed over padding: otherwise the second conv's window
        # at an utterance's end reads relu(bias) instead of zeros, and a padded utterance
        # would be recognised differently from the same utterance alone (or in a window).
        half_lengths = halved_lengths(lengths)
        x = zero_padding_frames(torch.relu(self.conv1(feats.unsqueeze(1))), half_lengths)
        x = torch.relu(self.conv2(x))  # (B, C, T/4, F/4)
        return self._project(x), halved_lengths(half_lengths)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, F') conv output -> (B, S, d_model) frames."""
        batch, channels, frames, freq = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq))

    def forward_chunk(
        self, feats: torch.Tensor, valid_frames: torch.Tensor, last_feature: torch.Tensor,
        last_half_rate: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk of 4C feature frames (B, 4C, F) -> (B, C, d_model) encoder frames.

        Encoder frame t reads first-conv outputs 2t-1..2t+1, and first-conv output u reads
        features 2u-1..2u+1. So the chunk's C frames need, besides its own features, the
        feature frame before it and the first conv's output before it: the caches
        `last_feature` (B, 1, F) and `last_half_rate` (B, channels, 1, F'). Zeros in both are
        exactly the two convs' zero padding at a stream's start. (Caching the previous 3
        feature frames instead would need a special first chunk: the first conv would turn
        them into relu(bias), where the full forward pads with zeros.) `valid_frames` (B,):
        feature frames of the chunk that belong to the stream; the rest is zeroed at both
        rates, as the full forward zeroes an utterance's padding. Returns the frames and the
        two new caches.
        """
        position = torch.arange(feats.shape[1], device=feats.device)
        feats = feats * (position[None, :] < valid_frames[:, None])[..., None].to(feats.dtype)
        window = torch.cat([last_feature, feats], dim=1).unsqueeze(1)  # (B, 1, 4C + 1, F)
        half_rate = torch.relu(conv_without_time_padding(self.conv1, window))  # 2C frames
        half_rate = zero_padding_frames(half_rate, halved_lengths(valid_frames))
        x = torch.cat([last_half_rate, half_rate], dim=2)  # (B, channels, 2C + 1, F')
        if self.kind == "regular":
            x = conv_without_time_padding(self.conv2, x)
        else:
            depthwise, pointwise = self.conv2
            x = pointwise(conv_without_time_padding(depthwise, x))
        return self._project(torch.relu(x)), feats[:, -1:], half_rate[:, :, -1:]
