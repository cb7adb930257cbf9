"""The streaming recogniser on the host (runtime/streaming.py) and transcribe.py --stream.

Random-weight tiny models on real speech: their tokens are arbitrary but deterministic, which
is all an equality with the chunk loop's offline decoding needs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from conftest import FSDD_DIR, LIBRISPEECH_DIR, REPO
from edge_conformer.data.audio import read_audio
from edge_conformer.data.features import FeatureSettings, FeatureStats, LogMelFeatures
from edge_conformer.data.tokenizer import Tokenizer, train_tokenizer
from edge_conformer.decode.ctc import collapse_ctc
from edge_conformer.errors import UserInputError
from edge_conformer.export.convert import convert_stream_to_coreml
from edge_conformer.export.stream_graph import build_stream_model
from edge_conformer.model import ConformerCTC
from edge_conformer.model.streaming import ChunkContext, stream_logits
from edge_conformer.runtime.bundle import frontend_description, write_frontend
from edge_conformer.runtime.checkpoint import TOKENIZER_FILE, load_checkpoint
from edge_conformer.runtime.stream_package import STREAM_PACKAGE_DIR, stream_description
from edge_conformer.runtime.streaming import (
    StreamingRecognizer,
    StreamingResampler,
    TorchChunks,
    checkpoint_recognizer,
    configured_context,
    export_recognizer,
)
from edge_conformer.runtime.windowing import WindowSpec

FSDD_WAV = FSDD_DIR / "recordings" / "7_jackson_3.wav"  # 8 kHz mono, 0.4 s
# A multi-digit utterance as the digits recipe builds them: 1.8 s of real FSDD takes.
FSDD_TAKES = ["7_jackson_3", "3_theo_10", "9_nicolas_5", "0_george_0", "5_yweweler_2"]
LIBRISPEECH_FLAC = LIBRISPEECH_DIR / "test-other" / "3005" / "163389" / "3005-163389-0002.flac"
DIGIT_WORDS = "zero one two three four five six seven eight nine oh".split()
MODEL = {"d_model": 32, "num_heads": 2, "num_layers": 2, "conv_kernel_size": 15}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    rng = random.Random(0)
    texts = [" ".join(rng.choices(DIGIT_WORDS, k=4)) for _ in range(200)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.model", 24)


def make_model(vocab_size: int, conv_context: str = "chunk", **sizes: int) -> ConformerCTC:
    """Random weights, with a head scaled up and no blank prior in its bias so that frames
    disagree on their best class (a head of small weights, or one that starts at the blank
    prior as training does, would make nearly every frame pick the same one). Seed 2: with seed
    0 the raw log-mels of normalize=none gave frames so alike that only 3 tokens came out."""
    torch.manual_seed(2)
    model = ConformerCTC(vocab_size, feat_dim=80, conv_context=conv_context,
                         **{**MODEL, **sizes})
    with torch.no_grad():
        model.head.weight.mul_(8.0)
        model.head.bias.zero_()
    return model.eval()


def front_end(normalize: str, speech: torch.Tensor | None = None) -> LogMelFeatures:
    """16 kHz log-mels; "global" normalises by the statistics of `speech`'s own frames."""
    settings = FeatureSettings(normalize=normalize)
    if normalize != "global":
        return LogMelFeatures(settings)
    log_mel = LogMelFeatures(FeatureSettings(normalize="none"))(speech)
    return LogMelFeatures(settings, FeatureStats(log_mel.mean(0).tolist(), log_mel.std(0).tolist()))


def feed_in_random_pieces(
    recognizer: StreamingRecognizer, waveform: torch.Tensor, rate: int, rng: random.Random
) -> list[list[int]]:
    """Feed `waveform` (at `rate`, (n,) or (channels, n)) in pieces of 10 ms to 1 s; return the
    token ids behind every partial transcript, checking that each text is theirs."""
    partials, start = [], 0
    while start < waveform.shape[-1]:
        size = rng.randint(rate // 100, rate)
        text = recognizer.accept(waveform[..., start : start + size].numpy(), rate)
        start += size
        if text is not None:
            assert text == recognizer.tokenizer.decode(recognizer.decoder.tokens)
            partials.append(list(recognizer.decoder.tokens))
    return partials


def chunk_loop_tokens(model, features, waveform, context) -> list[int]:
    """What the PyTorch chunk loop decodes offline: greedy CTC over `stream_logits`."""
    return collapse_ctc(stream_logits(model, features(waveform), context).argmax(dim=-1))


def speech(corpus: str) -> torch.Tensor:
    """Real speech at 16 kHz: FSDD digits (8 kHz, resampled) or a LibriSpeech utterance."""
    if corpus == "fsdd":
        return torch.cat([read_audio(FSDD_DIR / "recordings" / f"{take}.wav", 16000)
                          for take in FSDD_TAKES])
    return read_audio(LIBRISPEECH_FLAC, 16000)


@pytest.mark.parametrize("normalize", ["global", "none"])
@pytest.mark.parametrize("corpus,chunk,left", [("fsdd", 4, 8), ("librispeech", 16, 64)])
def test_streamed_transcript_is_the_chunk_loops(tokenizer, normalize, corpus, chunk, left):
    waveform = speech(corpus)
    features = front_end(normalize, waveform)
    model = make_model(tokenizer.vocab_size)
    context = ChunkContext(chunk, left)
    recognizer = StreamingRecognizer(features, tokenizer, TorchChunks(model, context), "test")
    expected = chunk_loop_tokens(model, features, waveform, context)
    # The random model emits varied tokens: the comparison means something.
    assert len(expected) >= 8 and len(set(expected)) >= 2
    rng = random.Random(0)
    for _ in range(2):  # finish() leaves the recogniser ready for the next stream
        partials = feed_in_random_pieces(recognizer, waveform, 16000, rng)
        assert partials  # some chunks completed before the end
        final = recognizer.finish()
        assert final == tokenizer.decode(expected)
        # Greedy CTC only appends: every partial's tokens start the final's.
        for tokens in partials:
            assert tokens == expected[: len(tokens)]
        assert recognizer.text == "" and recognizer.audio_seconds == 0


def test_streams_too_short_for_a_frame_have_empty_transcripts(tokenizer):
    """At most n_fft / 2 samples (256 at 16 kHz) make no frame: no speech, no error."""
    model, context = make_model(tokenizer.vocab_size), ChunkContext(4, 8)
    features = front_end("none")
    recognizer = StreamingRecognizer(features, tokenizer, TorchChunks(model, context), "test")
    assert recognizer.finish() == ""
    assert recognizer.accept(torch.randn(256)) is None
    assert recognizer.finish() == ""
    one_frame = torch.randn(257)  # the stream's last, partial chunk is its only one
    recognizer.accept(one_frame)
    expected = chunk_loop_tokens(model, features, one_frame, context)
    assert recognizer.finish() == tokenizer.decode(expected)


def test_a_long_stream_keeps_bounded_buffers(tokenizer):
    """20 s of noise at 44.1 kHz stereo in 100 ms pieces (125 chunks): what the recogniser
    keeps between pieces never grows (the transcript aside)."""
    features, context = front_end("none"), ChunkContext(4, 8)
    backend = TorchChunks(make_model(tokenizer.vocab_size), context)
    recognizer = StreamingRecognizer(features, tokenizer, backend, "test")
    initial_state = {name: value.shape for name, value in vars(backend.state).items()
                     if isinstance(value, torch.Tensor)}
    torch.manual_seed(1)
    piece = 4410
    sizes = []
    for _ in range(200):
        recognizer.accept(0.1 * torch.randn(2, piece), 44100)
        state = {name: value.shape for name, value in vars(backend.state).items()
                 if isinstance(value, torch.Tensor)}
        assert state == initial_state
        assert len(recognizer.pending) < context.feature_frames
        sizes.append((len(recognizer.frontend._signal), len(recognizer.resampler.buffer)))
    assert recognizer.audio_seconds == pytest.approx(20.0)
    # The front end keeps under one n_fft span plus a piece, the resampler under one window
    # plus a piece: the same late in the stream as early.
    frontend_kept, resampler_kept = (max(column) for column in zip(*sizes))
    assert frontend_kept < features.settings.n_fft + piece * 16000 // 44100 + 1
    assert resampler_kept < recognizer.resampler.kernel.shape[-1] + piece
    assert max(sizes[100:]) <= max(sizes[:100])
    recognizer.finish()


def test_streaming_resampler_equals_torchaudio():
    torch.manual_seed(2)
    waveform = torch.randn(44100 + 123)
    rng = random.Random(2)
    resampler, pieces, start = StreamingResampler(44100, 16000), [], 0
    while start < len(waveform):
        size = rng.randint(1, 20000)
        pieces.append(resampler.accept(waveform[start : start + size]))
        start += size
    pieces.append(resampler.flush())
    streamed, offline = torch.cat(pieces), AF.resample(waveform, 44100, 16000)
    assert streamed.shape == offline.shape
    # The same sums of the same products, in another order: float32 rounding apart.
    torch.testing.assert_close(streamed, offline, atol=5e-5, rtol=0)


def test_stereo_44k_is_down_mixed_and_resampled(tokenizer, tmp_path):
    """A 44.1 kHz stereo file fed raw (channels, n) in pieces recognises what its 16 kHz mono
    reading (read_audio: down-mix, resample) recognises, and its seconds are the file's."""
    samples, rate = sf.read(FSDD_WAV, dtype="float32")
    upsampled = AF.resample(torch.from_numpy(samples), rate, 44100)
    stereo_file = tmp_path / "stereo_44k.wav"
    sf.write(stereo_file, torch.stack([upsampled, 0.5 * upsampled], dim=1).numpy(), 44100)
    stereo, _ = sf.read(stereo_file, dtype="float32", always_2d=True)
    features, context = front_end("none"), ChunkContext(4, 8)
    model = make_model(tokenizer.vocab_size)
    recognizer = StreamingRecognizer(features, tokenizer, TorchChunks(model, context), "test")
    feed_in_random_pieces(recognizer, torch.from_numpy(stereo.T.copy()), 44100, random.Random(3))
    assert recognizer.audio_seconds == pytest.approx(len(stereo) / 44100)
    mono_16k = read_audio(stereo_file, 16000)
    assert recognizer.finish() == tokenizer.decode(
        chunk_loop_tokens(model, features, mono_16k, context)
    )
    with pytest.raises(ValueError, match="one sample rate"):
        recognizer.accept(stereo[:100].T, 44100)
        recognizer.accept(stereo[:100].T, 48000)


# ---------------------------------------------------------------------------------------------
# Checkpoints and export directories


def write_checkpoint(
    path: Path, tokenizer: Tokenizer, conv_context: str = "chunk", normalize: str = "global"
) -> Path:
    """A training checkpoint as edge_conformer.training writes it (what load_checkpoint reads)
    of the random tiny model; global statistics from real speech; deployed chunks 4, left 8."""
    model = make_model(tokenizer.vocab_size, conv_context)
    features = front_end(normalize, speech("fsdd"))
    config = {
        "model": {"_target_": "edge_conformer.model.ConformerCTC", **MODEL,
                  "conv_context": conv_context, "streaming": {"eval_chunk": 4, "eval_left": 8}},
        "data": {"features": asdict(features.settings)},
    }
    extras = {"config": config, "tokenizer_model": tokenizer.model_path.read_bytes()}
    if features.stats is not None:
        extras["feature_stats"] = asdict(features.stats)
    state = {f"model.{name}": value for name, value in model.state_dict().items()}
    torch.save({"state_dict": state, "edge_conformer": extras}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", tokenizer)


def write_export_dir(directory: Path, tokenizer: Tokenizer, model=None, context=None) -> Path:
    """An export directory's front end (frontend.json, tokenizer); with a model and context,
    the streaming section for them too (the caller writes the package)."""
    features = front_end("global", speech("fsdd"))
    description = frontend_description(features, WindowSpec(200, 40), tokenizer.vocab_size)
    if model is not None:
        description["streaming"] = stream_description(model, context, features)
    directory.mkdir(parents=True, exist_ok=True)
    write_frontend(directory, description)
    (directory / TOKENIZER_FILE).write_bytes(tokenizer.model_path.read_bytes())
    return directory


def test_checkpoint_recognizer_streams_the_deployed_setting(checkpoint, tmp_path):
    loaded = load_checkpoint(checkpoint, tmp_path)
    context = configured_context(loaded.config["model"])
    assert context == ChunkContext(4, 8)  # model.streaming.eval_chunk / eval_left
    assert configured_context({}, left_frames=32) == ChunkContext(16, 32)  # older configs
    recognizer = checkpoint_recognizer(loaded, context)
    assert "chunks of 4 encoder frames (0.16 s), 8 frames of left context" in (
        recognizer.description
    )
    waveform = speech("fsdd")
    recognizer.accept(waveform)
    expected = chunk_loop_tokens(loaded.model, loaded.features, waveform, context)
    assert recognizer.finish() == loaded.tokenizer.decode(expected)


@pytest.mark.parametrize("conv_context,normalize,left,knob", [
    ("symmetric", "global", 8, "model.conv_context=symmetric"),
    ("chunk", "utterance", 8, "data.features.normalize=utterance"),
    ("causal", "none", -1, "left_frames=-1"),
])
def test_checkpoints_that_cannot_stream_are_refused(
    tokenizer, tmp_path, conv_context, normalize, left, knob
):
    path = write_checkpoint(tmp_path / "last.ckpt", tokenizer, conv_context, normalize)
    loaded = load_checkpoint(path, tmp_path)
    with pytest.raises(UserInputError, match=knob) as refused:
        checkpoint_recognizer(loaded, ChunkContext(4, left))
    assert str(refused.value).startswith(str(path))


def test_an_export_without_a_streaming_package_is_refused(tokenizer, tmp_path):
    export_dir = write_export_dir(tmp_path / "export", tokenizer)
    with pytest.raises(UserInputError, match="no streaming package") as refused:
        export_recognizer(export_dir, "executor")
    assert str(refused.value).startswith(str(export_dir))


@pytest.mark.slow
def test_exported_stream_package_streams_in_the_executor(tokenizer, tmp_path):
    """stream.mlpackage (converted in FP32) in the executor's fp32 mode, through the export
    directory: the transcript of the PyTorch chunk loop, partials prefixes of it. One layer:
    conversion time grows with the op count (20 s for one layer on a busy CI core)."""
    model = make_model(tokenizer.vocab_size, num_layers=1, conv_kernel_size=7)
    context = ChunkContext(4, 8)
    export_dir = write_export_dir(tmp_path / "export", tokenizer, model, context)
    convert_stream_to_coreml(
        build_stream_model(model, context), export_dir / STREAM_PACKAGE_DIR, precision="fp32"
    )
    recognizer = export_recognizer(export_dir, "executor", "fp32")
    assert "package executor, mode fp32" in recognizer.description
    waveform = speech("fsdd")
    partials = feed_in_random_pieces(recognizer, waveform, 16000, random.Random(4))
    expected = chunk_loop_tokens(model, recognizer.features, waveform, context)
    assert recognizer.finish() == tokenizer.decode(expected)
    assert partials and all(tokens == expected[: len(tokens)] for tokens in partials)


# ---------------------------------------------------------------------------------------------
# tools/transcribe.py --stream


def run_transcribe(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "transcribe.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict[str, Path]:
    """1.8 s of FSDD digits at 16 kHz mono, the same as 44.1 kHz stereo, and a corrupt file."""
    out = tmp_path_factory.mktemp("audio")
    waveform = speech("fsdd")
    mono = out / "digits_16k.wav"
    sf.write(mono, waveform.numpy(), 16000)
    upsampled = AF.resample(waveform, 16000, 44100)
    stereo = out / "digits_44k_stereo.wav"
    sf.write(stereo, torch.stack([upsampled, upsampled], dim=1).numpy(), 44100)
    corrupt = out / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return {"mono": mono, "stereo": stereo, "corrupt": corrupt}


def stream_lines(stdout: str) -> dict[str, list[tuple[float, str]]]:
    """transcribe.py --stream output: each file's (seconds, text) lines, in order."""
    by_file: dict[str, list[tuple[float, str]]] = {}
    for line in stdout.splitlines():
        path, seconds, text = line.split("\t")
        by_file.setdefault(path, []).append((float(seconds), text))
    return by_file


@pytest.mark.slow
def test_transcribe_stream_prints_partials_then_the_final_line(
    checkpoint, audio_files, tmp_path
):
    mono, stereo, corrupt = audio_files["mono"], audio_files["stereo"], audio_files["corrupt"]
    done = run_transcribe("--model", str(checkpoint), "--stream", str(corrupt), str(mono),
                          str(stereo))
    assert done.returncode == 1  # the corrupt file; the others are still transcribed
    assert f"error: {corrupt}" in done.stderr
    assert "PyTorch FP32 chunk loop, chunks of 4 encoder frames" in done.stderr
    lines = stream_lines(done.stdout)
    assert list(lines) == [str(mono), str(stereo)]  # one file after the other
    loaded = load_checkpoint(checkpoint, tmp_path)
    for path, file_lines in lines.items():
        seconds = [second for second, _ in file_lines]
        *partials, (final_seconds, final_text) = file_lines
        assert len(partials) >= 5  # 1.8 s in chunks of 0.16 s
        assert seconds[:-1] == sorted(set(seconds[:-1])) and final_seconds >= seconds[-2]
        assert final_seconds == pytest.approx(sf.info(path).duration, abs=0.005)
        waveform = read_audio(path, 16000)  # down-mixed and resampled like any file
        context = ChunkContext(4, 8)
        expected = chunk_loop_tokens(loaded.model, loaded.features, waveform, context)
        assert final_text == loaded.tokenizer.decode(expected)


@pytest.mark.slow
def test_transcribe_realtime_paces_the_audio(checkpoint, audio_files):
    """--realtime: a line for audio second s cannot come before s seconds of the stream have
    passed, so the lines spread over the audio's duration (unpaced, they come within ms)."""
    mono = audio_files["mono"]
    cmd = [sys.executable, str(REPO / "tools" / "transcribe.py"), "--model", str(checkpoint),
           "--realtime", str(mono)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    arrivals = []
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) as tool:
        for line in tool.stdout:
            arrivals.append((time.monotonic(), float(line.split("\t")[1])))
    assert tool.returncode == 0
    (first_time, first_seconds), (last_time, last_seconds) = arrivals[0], arrivals[-1]
    assert last_seconds == pytest.approx(sf.info(mono).duration, abs=0.005)
    # The first line may come late by a chunk's compute (busy machine): 0.3 s of slack.
    assert last_time - first_time >= last_seconds - first_seconds - 0.3
