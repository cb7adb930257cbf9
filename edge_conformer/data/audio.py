"""Audio I/O with the checks a corpus needs: every failure names the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class BadAudioError(ValueError):
    """An audio file that cannot be used for training or evaluation."""


def check_audio_file(path: str | Path) -> sf._SoundFileInfo:
    """Return the file's header info, or raise BadAudioError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise BadAudioError(f"{path}: file does not exist")
    if not path.is_file():
        raise BadAudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise BadAudioError(f"{path}: file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError for bad headers
        raise BadAudioError(f"{path}: unreadable audio ({err})") from err
    if info.frames == 0:
        raise BadAudioError(f"{path}: audio has zero samples")
    return info


def to_mono(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(channels, n) or (n,) -> (n,) float32, averaging channels (down-mix)."""
    waveform = torch.as_tensor(samples, dtype=torch.float32)
    return waveform.mean(dim=0) if waveform.dim() == 2 else waveform


def resample(waveform: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    if source_rate == target_rate:
        return waveform
    return AF.resample(waveform, source_rate, target_rate)


def read_audio(path: str | Path, target_rate: int) -> torch.Tensor:
    """Read any soundfile-readable file as mono float32 at `target_rate`, checking it is usable."""
    check_audio_file(path)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise BadAudioError(f"{path}: corrupt audio data ({err})") from err
    waveform = to_mono(samples.T)
    if not torch.isfinite(waveform).all():
        raise BadAudioError(f"{path}: audio contains NaN or infinite samples")
    return resample(waveform, rate, target_rate)
