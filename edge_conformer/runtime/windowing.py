"""Long audio on a fixed-window model: overlapping windows, CTC logits stitched on the host.

The Neural Engine package takes one fixed window of T feature frames (flexible shapes can push
Core ML off the Neural Engine). Longer audio is cut into windows of T frames that start every
T - overlap frames; each window is recognised alone, and its logits are kept only where it has
context on both sides: overlapping stretches are split at their midpoint, so every kept frame
sees at least overlap / 2 frames on the side of a seam (the utterance's own ends are real ends).

Window starts are multiples of the subsampling factor F (4 feature frames), so that window
output frame j is global output frame start / F + j and the stitched logits line up exactly with
whole-utterance decoding (`output_frames(num_frames)` frames in all).

The same `windowed_logits` drives the FP32 training graph (`torch_window_runner`) and the FP16
package (`package_window_runner`, executor or Core ML), so a parity check that compares the
two isolates FP16 arithmetic from the cost of windowing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from edge_conformer.model import ConformerCTC
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR, output_frames

# A window runner: (window features (T, n_mels), number of valid leading frames) -> logits of
# that window's valid output frames, (subsampled_lengths(valid), vocab + 1).
WindowRunner = Callable[[torch.Tensor, int], torch.Tensor]
# What a package exposes: named input arrays -> named output arrays.
PackagePredict = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
# An utterance's recogniser: features (N, n_mels) -> logits (output_frames(N), vocab + 1).
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def _round_to_subsampling(frames: float) -> int:
    return SUBSAMPLING_FACTOR * round(frames / SUBSAMPLING_FACTOR)


@dataclass(frozen=True)
class WindowSpec:
    """Windows of `window_frames` feature frames; consecutive ones share `overlap_frames`."""

    window_frames: int
    overlap_frames: int

    def __post_init__(self) -> None:
        if self.window_frames <= 0 or self.window_frames % SUBSAMPLING_FACTOR:
            raise ValueError(
                f"window_frames must be a positive multiple of {SUBSAMPLING_FACTOR}, "
                f"got {self.window_frames}"
            )
        if self.overlap_frames < 0 or self.overlap_frames % SUBSAMPLING_FACTOR:
            raise ValueError(
                f"overlap_frames must be a non-negative multiple of {SUBSAMPLING_FACTOR}, "
                f"got {self.overlap_frames}"
            )
        if self.overlap_frames >= self.window_frames:
            raise ValueError(
                f"overlap ({self.overlap_frames} frames) must be shorter than the window "
                f"({self.window_frames} frames)"
            )

    @classmethod
    def from_seconds(
        cls, window_seconds: float, overlap_seconds: float, frames_per_second: float
    ) -> WindowSpec:
        """Window and overlap in seconds, rounded to whole multiples of SUBSAMPLING_FACTOR."""
        return cls(
            window_frames=_round_to_subsampling(window_seconds * frames_per_second),
            overlap_frames=_round_to_subsampling(overlap_seconds * frames_per_second),
        )

    @property
    def hop_frames(self) -> int:
        """Feature frames between the starts of consecutive windows."""
        return self.window_frames - self.overlap_frames

    @property
    def window_output_frames(self) -> int:
        return output_frames(self.window_frames)

    def describe(self, frames_per_second: float) -> dict:
        """The window in frames and seconds, as frontend.json and parity.json report it."""
        return {
            "frames": self.window_frames,
            "seconds": self.window_frames / frames_per_second,
            "overlap_frames": self.overlap_frames,
            "overlap_seconds": self.overlap_frames / frames_per_second,
            "hop_frames": self.hop_frames,
            "output_frames": self.window_output_frames,
        }

    def starts(self, num_frames: int) -> list[int]:
        """Feature-frame starts of the windows covering `num_frames` frames (at least one)."""
        if num_frames <= self.window_frames:
            return [0]
        extra_windows = -(-(num_frames - self.window_frames) // self.hop_frames)  # ceil
        return [i * self.hop_frames for i in range(extra_windows + 1)]


def kept_output_ranges(num_frames: int, spec: WindowSpec) -> list[tuple[int, int, int]]:
    """For each window: (start feature frame, first kept output frame, end output frame).

    Output frames are global (utterance) indices. Neighbouring windows overlap by
    overlap_frames / SUBSAMPLING_FACTOR output frames and hand over at its midpoint.
    """
    starts = spec.starts(num_frames)
    total = output_frames(num_frames)
    factor = SUBSAMPLING_FACTOR
    seams = [start // factor + spec.overlap_frames // (2 * factor) for start in starts[1:]]
    firsts = [0, *seams]
    ends = [*seams, total]
    return list(zip(starts, firsts, ends))


def windowed_logits(
    features: torch.Tensor, run_window: WindowRunner, spec: WindowSpec
) -> torch.Tensor:
    """Logits (output_frames(N), vocab + 1) of features (N, n_mels), window by window.

    Each window is zero padded to `spec.window_frames` and handed to `run_window` with its
    count of valid frames; only its kept output frames enter the result.
    """
    num_frames, num_mels = features.shape
    pieces = []
    for start, first, end in kept_output_ranges(num_frames, spec):
        window = features.new_zeros(spec.window_frames, num_mels)
        valid = min(spec.window_frames, num_frames - start)
        window[:valid] = features[start : start + valid]
        logits = run_window(window, valid)
        offset = start // SUBSAMPLING_FACTOR
        pieces.append(logits[first - offset : end - offset])
    return torch.cat(pieces)


# ---------------------------------------------------------------------------------------------
# Runners


@torch.no_grad()
def whole_utterance_logits(model: ConformerCTC, features: torch.Tensor) -> torch.Tensor:
    """The training graph's logits (output_frames(N), vocab + 1) for all N frames at once."""
    logits, _ = model(features[None], torch.tensor([features.shape[0]]))
    return logits[0]


def torch_window_runner(model: ConformerCTC) -> WindowRunner:
    """Run windows through the FP32 training graph (the reference for the FP16 package)."""

    def run_window(window: torch.Tensor, valid: int) -> torch.Tensor:
        # The training graph masks padding exactly, so the valid prefix alone gives the same
        # logits as the padded window does; it is also cheaper.
        return whole_utterance_logits(model, window[:valid])

    return run_window


def package_inputs(window: torch.Tensor, valid: int) -> dict[str, np.ndarray]:
    """The package's inputs for one window: channels-first features and a feature-rate mask."""
    window_frames, num_mels = window.shape
    features = window.T.reshape(1, num_mels, 1, window_frames)
    mask = (torch.arange(window_frames) < valid).float().reshape(1, 1, 1, window_frames)
    return {
        "features": np.ascontiguousarray(features.numpy(), dtype=np.float32),
        "feature_mask": mask.numpy(),
    }


def package_window_runner(predict: PackagePredict) -> WindowRunner:
    """Run windows through a package: `PackageExecutor` (as `lambda x: executor(**x)`) or a
    Core ML `MLModel.predict`. Logits come back (1, vocab + 1, 1, S) and are turned frame-major."""

    def run_window(window: torch.Tensor, valid: int) -> torch.Tensor:
        logits = np.asarray(predict(package_inputs(window, valid))["logits"], dtype=np.float32)
        return torch.from_numpy(logits[0, :, 0, : output_frames(valid)].T.copy())

    return run_window
