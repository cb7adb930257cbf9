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
# Several utterances' recogniser: a LogitsFn over a list, which may run them together.
BatchLogitsFn = Callable[[list[torch.Tensor]], list[torch.Tensor]]
# Several windows at once: (windows (W, T, n_mels), each one's valid frames) -> each one's logits.
WindowsRunner = Callable[[torch.Tensor, list[int]], list[torch.Tensor]]


def one_by_one(logits_fn: LogitsFn) -> BatchLogitsFn:
    """`logits_fn` as a recogniser of several utterances, each in turn."""
    return lambda utterances: [logits_fn(features) for features in utterances]


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
    def run_windows(windows: torch.Tensor, valid: list[int]) -> list[torch.Tensor]:
        return [run_window(window, frames) for window, frames in zip(windows, valid, strict=True)]

    return windowed_logits_of([features], run_windows, spec)[0]


def windowed_logits_of(
    utterances: list[torch.Tensor], run_windows: WindowsRunner, spec: WindowSpec
) -> list[torch.Tensor]:
    """`windowed_logits` of several utterances, their windows handed to `run_windows` at once."""
    layouts = [kept_output_ranges(features.shape[0], spec) for features in utterances]
    windows, valid = [], []
    for features, layout in zip(utterances, layouts, strict=True):
        for start, _, _ in layout:
            window = features.new_zeros(spec.window_frames, features.shape[1])
            frames = min(spec.window_frames, features.shape[0] - start)
            window[:frames] = features[start : start + frames]
            windows.append(window)
            valid.append(frames)
    window_logits = iter(run_windows(torch.stack(windows), valid))
    stitched = []
    for layout in layouts:
        pieces = []
        for start, first, end in layout:
            offset = start // SUBSAMPLING_FACTOR
            pieces.append(next(window_logits)[first - offset : end - offset])
        stitched.append(torch.cat(pieces))
    return stitched


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


def package_inputs(windows: torch.Tensor, valid: list[int]) -> dict[str, np.ndarray]:
    """The package's inputs for windows (W, T, n_mels): channels-first features and a
    feature-rate mask, one row per window (W > 1: the executor's batched call)."""
    count, window_frames, num_mels = windows.shape
    features = windows.transpose(1, 2).reshape(count, num_mels, 1, window_frames)
    mask = torch.arange(window_frames)[None] < torch.tensor(valid)[:, None]
    return {
        "features": np.ascontiguousarray(features.numpy(), dtype=np.float32),
        "feature_mask": mask.float().reshape(count, 1, 1, window_frames).numpy(),
    }


def package_windows_runner(predict: PackagePredict) -> WindowsRunner:
    """Run windows through a package in one call: `PackageExecutor` (as `lambda x:
    executor(**x)`), which takes several as a batch. Logits come back (W, vocab + 1, 1, S)
    and are turned frame-major."""

    def run_windows(windows: torch.Tensor, valid: list[int]) -> list[torch.Tensor]:
        logits = np.asarray(predict(package_inputs(windows, valid))["logits"], dtype=np.float32)
        return [torch.from_numpy(logits[row, :, 0, : output_frames(frames)].T.copy())
                for row, frames in enumerate(valid)]

    return run_windows


def package_window_runner(predict: PackagePredict) -> WindowRunner:
    """Run windows through a package one at a time: the executor, or a Core ML
    `MLModel.predict` (whose package takes one window)."""
    run_windows = package_windows_runner(predict)
    return lambda window, valid: run_windows(window[None], [valid])[0]
