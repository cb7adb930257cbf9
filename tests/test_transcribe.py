"""tools/transcribe.py on real FSDD audio: 8 kHz mono as recorded, and a 44.1 kHz stereo copy;
its JSON format with beam search, a lexicon and an LM (tools/build_lm.py)."""

from __future__ import annotations

import json
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
from edge_conformer.data.corpora.digits import DIGIT_WORDS
from edge_conformer.decode.beam import decode_settings
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


def run_tool(tool: str, *args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / tool), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)


def run_transcribe(model: Path, *args: object) -> subprocess.CompletedProcess:
    return run_tool("transcribe.py", "--model", model, *args)


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
    assert lines[str(mono)] == export_transcriber(export_dir, "executor", "fp16")(mono).text


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
    assert lines[str(mono)] == checkpoint_transcriber(loaded, window=None)(mono).text


@pytest.fixture(scope="module")
def recipe_lm(trained_digits_run: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The lexicon and LM tools/build_lm.py builds from the tiny run's training transcripts."""
    loaded = load_checkpoint(trained_digits_run, tmp_path_factory.mktemp("tokenizer"))
    transcripts = Path(loaded.config["data"]["data_dir"]) / "cuts_train.jsonl.gz"
    out = tmp_path_factory.mktemp("lm")
    done = run_tool("build_lm.py", "--model", trained_digits_run, "--transcripts", transcripts,
                    "--out-dir", out)
    assert done.returncode == 0, done.stderr
    return out / "lexicon.txt", out / "lm.arpa"


def json_transcripts(done: subprocess.CompletedProcess) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def check_words(result: dict) -> None:
    """Words in order, inside the audio, each with a confidence; together they are the text."""
    words = result["words"]
    assert " ".join(word["word"] for word in words) == result["text"]
    bounds = [(word["start"], word["end"]) for word in words]
    assert all(0 <= start < end <= result["audio_seconds"] for start, end in bounds)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:]))
    assert all(0 < word["confidence"] <= 1 for word in words)


def test_json_beam_search_with_the_recipes_lexicon_and_lm(
    trained_digits_run: Path, recipe_lm: tuple[Path, Path], audio_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    lexicon, lm = recipe_lm
    assert {line.split()[0] for line in lexicon.read_text().splitlines()} <= set(DIGIT_WORDS)
    mono, stereo = audio_files["mono_8k"], audio_files["stereo_44k"]
    done = run_transcribe(trained_digits_run, "--format", "json", "--beam", 4,
                          "--lexicon", lexicon, "--lm", lm, mono, stereo)
    results = json_transcripts(done)
    assert [r["path"] for r in results] == [str(mono), str(stereo)]
    for result in results:
        assert set(result) == {"path", "text", "words", "model", "decoder", "audio_seconds",
                               "compute_seconds"}
        assert "PyTorch FP32" in result["model"] and result["compute_seconds"] > 0
        assert result["decoder"].startswith("beam search: beam 4, lexicon")
        assert set(result["text"].split()) <= set(DIGIT_WORDS)
        check_words(result)
    loaded = load_checkpoint(trained_digits_run, tmp_path)
    settings = decode_settings(beam_size=4, lexicon=str(lexicon), lm=str(lm))
    beam = checkpoint_transcriber(loaded, window=None).with_decoding(settings)
    assert results[0]["text"] == beam(mono).text


def test_json_beam_search_runs_the_package_too(
    digits_export, recipe_lm: tuple[Path, Path], audio_files: dict[str, Path]
) -> None:
    _, export_dir = digits_export
    (result,) = json_transcripts(run_transcribe(
        export_dir, "--format", "json", "--beam", 4, "--lexicon", recipe_lm[0],
        audio_files["mono_8k"]))
    assert "FP16 package, package executor" in result["model"]
    assert "beam search: beam 4" in result["decoder"]
    check_words(result)


def test_a_missing_lexicon_is_one_line_naming_it(
    trained_digits_run: Path, audio_files: dict[str, Path]
) -> None:
    # Every other bad lexicon, LM or decoding knob: tests/test_beam.py, through the library.
    done = run_transcribe(trained_digits_run, "--beam", 4, "--lexicon", "missing.txt",
                          audio_files["mono_8k"])
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("transcribe.py: missing.txt: unreadable lexicon")
    assert len(done.stderr.strip().splitlines()) == 1
