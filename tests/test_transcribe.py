"""tools/transcribe.py on real FSDD audio: 8 kHz mono as recorded, and a 44.1 kHz stereo copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from conftest import REPO
from edge_conformer.data.audio import read_audio
from edge_conformer.runtime.bundle import load_bundle
from edge_conformer.runtime.checkpoint import load_checkpoint
from edge_conformer.runtime.transcriber import checkpoint_transcriber, export_transcriber

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audio_files(fsdd_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """A real 8 kHz FSDD take, the same take as 44.1 kHz stereo, and a corrupt file."""
    out = tmp_path_factory.mktemp("audio")
    mono_8k = fsdd_dir / "recordings" / "7_jackson_3.wav"
    samples, rate = sf.read(mono_8k, dtype="float32")
    assert rate == 8000 and samples.ndim == 1
    upsampled = AF.resample(torch.from_numpy(samples), rate, 44100).numpy()
    stereo_44k = out / "7_jackson_3_stereo_44k.wav"
    sf.write(stereo_44k, [[s, s] for s in upsampled], 44100)
    corrupt = out / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return {"mono_8k": mono_8k, "stereo_44k": stereo_44k, "corrupt": corrupt}


def run_transcribe(model: Path, *files: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "transcribe.py"), "--model", str(model),
           *map(str, files)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)


def transcripts(done: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in done.stdout.splitlines())


def test_export_dir_transcribes_any_rate_and_channel_count(
    digits_export, audio_files: dict[str, Path]
) -> None:
    _, export_dir = digits_export
    mono, stereo = audio_files["mono_8k"], audio_files["stereo_44k"]
    done = run_transcribe(export_dir, mono, stereo)
    assert done.returncode == 0, done.stderr
    assert "package executor" in done.stderr  # Linux: no Core ML runtime
    lines = transcripts(done)
    assert list(lines) == [str(mono), str(stereo)]
    # Both reach the model as the same mono speech at its rate (down-mixed, resampled) ...
    rate = load_bundle(export_dir).features.sample_rate
    from_mono, from_stereo = read_audio(mono, rate), read_audio(stereo, rate)
    assert abs(len(from_mono) - len(from_stereo)) <= 1
    frames = min(len(from_mono), len(from_stereo))
    error = (from_mono[:frames] - from_stereo[:frames]).norm() / from_mono.norm()
    assert error < 3e-2  # the round trip via 44.1 kHz loses only the band at 4 kHz (-39 dB)
    # ... and the tool prints what the library computes.
    assert lines[str(mono)] == export_transcriber(export_dir, "executor", "fp16")(mono)


def test_unreadable_audio_is_named_and_the_rest_still_transcribed(
    trained_digits_run: Path, audio_files: dict[str, Path], tmp_path: Path
) -> None:
    mono = audio_files["mono_8k"]
    done = run_transcribe(trained_digits_run, audio_files["corrupt"], mono)
    assert done.returncode == 1
    assert f"error: {audio_files['corrupt']}" in done.stderr
    assert "whole utterances" in done.stderr  # a checkpoint runs in PyTorch, unwindowed
    lines = transcripts(done)
    assert list(lines) == [str(mono)]
    loaded = load_checkpoint(trained_digits_run, tmp_path)
    assert lines[str(mono)] == checkpoint_transcriber(loaded, window=None)(mono)
