"""Long audio: fixed windows, overlap, and CTC logits stitched back onto the utterance's frames."""

from __future__ import annotations

import pytest
import torch

from conftest import LIBRISPEECH_DIR
from edge_conformer.data.audio import read_audio
from edge_conformer.data.features import FeatureSettings, LogMelFeatures
from edge_conformer.export import build_ane_model
from edge_conformer.model import ConformerCTC
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR
from edge_conformer.runtime.bundle import frontend_description
from edge_conformer.runtime.windowing import (
    WindowSpec,
    kept_output_ranges,
    output_frames,
    package_window_runner,
    torch_window_runner,
    whole_utterance_logits,
    windowed_logits,
)

N_MELS = 80
VOCAB = 12
SPEC = WindowSpec(window_frames=64, overlap_frames=16)


def tiny_model() -> ConformerCTC:
    torch.manual_seed(0)
    return ConformerCTC(
        vocab_size=VOCAB, feat_dim=N_MELS, d_model=32, num_heads=2, num_layers=2,
        conv_kernel_size=7, dropout=0.0,
    ).eval()


def frame_index_runner(window_starts: list[int]):
    """A fake model whose logits hold, in class 0, the global output frame they belong to."""

    def run_window(window: torch.Tensor, valid: int) -> torch.Tensor:
        start = window_starts.pop(0)
        frames = output_frames(valid)
        logits = torch.zeros(frames, VOCAB + 1)
        logits[:, 0] = start // SUBSAMPLING_FACTOR + torch.arange(frames)
        return logits

    return run_window


@pytest.mark.parametrize("num_frames", [1, 63, 64, 65, 111, 112, 113, 200, 1001])
def test_stitched_frames_are_the_utterances_frames_once_each_in_order(num_frames: int) -> None:
    starts = SPEC.starts(num_frames)
    logits = windowed_logits(torch.zeros(num_frames, N_MELS), frame_index_runner(starts), SPEC)
    assert logits[:, 0].tolist() == list(range(output_frames(num_frames)))


def test_seams_sit_at_the_midpoint_of_each_overlap() -> None:
    ranges = kept_output_ranges(200, SPEC)  # windows start at 0, 48, 96, 144 feature frames
    assert [start for start, _, _ in ranges] == [0, 48, 96, 144]
    # window k covers output frames [12k, 12k + 16); overlaps of 4 frames split 2 / 2
    assert [(first, end) for _, first, end in ranges] == [(0, 14), (14, 26), (26, 38), (38, 50)]


def test_window_spec_rounds_seconds_to_whole_output_frames() -> None:
    spec = WindowSpec.from_seconds(8.0, 2.0, frames_per_second=100)
    assert (spec.window_frames, spec.overlap_frames, spec.hop_frames) == (800, 200, 600)
    assert spec.window_output_frames == 200
    with pytest.raises(ValueError, match="shorter than the window"):
        WindowSpec(64, 64)


def test_the_subsampling_factor_is_what_the_model_computes() -> None:
    """Window starts rely on it: k * SUBSAMPLING_FACTOR feature frames give k encoder frames."""
    subsampling = tiny_model().subsampling
    for k in (1, 2, 7):
        frames = k * SUBSAMPLING_FACTOR
        out, lengths = subsampling(torch.randn(1, frames, N_MELS), torch.tensor([frames]))
        assert out.shape[1] == int(lengths[0]) == output_frames(frames) == k


def test_seconds_follow_the_hop_the_stft_uses() -> None:
    """22.05 kHz at 10 ms: the STFT hops 220 samples, so frames last 220 / 22050 s, not 10 ms."""
    features = LogMelFeatures(FeatureSettings(sample_rate=22050, n_fft=1024, hop_length_ms=10.0))
    one_second = features(torch.zeros(22050)).shape[0]
    assert one_second == 22050 // 220 + 1  # the centred STFT's frames, one every 220 samples
    fps = features.settings.frames_per_second
    spec = WindowSpec.from_seconds(8.0, 2.0, fps)
    assert spec.window_frames == 800  # 8 s * 100.2 frames/s, rounded to whole output frames
    window = frontend_description(features, spec, vocab_size=VOCAB)["window"]
    assert window["seconds"] == pytest.approx(800 * 220 / 22050)
    assert window["overlap_seconds"] == pytest.approx(spec.overlap_frames * 220 / 22050)


def test_one_window_over_the_whole_utterance_equals_whole_utterance_decoding() -> None:
    model = tiny_model()
    features = torch.randn(57, N_MELS, generator=torch.Generator().manual_seed(1))
    windowed = windowed_logits(features, torch_window_runner(model), SPEC)
    torch.testing.assert_close(windowed, whole_utterance_logits(model, features), rtol=0, atol=0)


def test_ane_graph_windows_equal_training_graph_windows() -> None:
    """The package's inputs (channels-first features, feature-rate mask, a zero padded last
    window) give the training graph's logits on every window, in FP32."""
    model = tiny_model()
    ane_model = build_ane_model(model, window_frames=SPEC.window_frames)

    def ane_predict(inputs):
        with torch.no_grad():
            logits = ane_model(*(torch.from_numpy(inputs[k]) for k in ("features", "feature_mask")))
        return {"logits": logits.numpy()}

    features = torch.randn(150, N_MELS, generator=torch.Generator().manual_seed(2))
    ane = windowed_logits(features, package_window_runner(ane_predict), SPEC)
    training = windowed_logits(features, torch_window_runner(model), SPEC)
    assert (ane - training).abs().max() <= 1e-4


def longest_librispeech_files(count: int) -> list:
    import soundfile as sf

    files = sorted(LIBRISPEECH_DIR.glob("test-other/*/*/*.flac"), key=lambda f: sf.info(f).frames)
    if not files:
        pytest.fail(f"{LIBRISPEECH_DIR}/test-other: the LibriSpeech subset must lie in ../shared")
    return files[-count:]


def test_longest_real_utterances_decode_window_by_window() -> None:
    """The longest test-other utterances (about 20 to 23 s) in the default 8 s windows."""
    model = tiny_model()
    features = LogMelFeatures()
    spec = WindowSpec.from_seconds(8.0, 2.0, features.settings.frames_per_second)
    for path in longest_librispeech_files(3):
        feats = features(read_audio(path, features.sample_rate))
        assert feats.shape[0] > 2 * spec.window_frames  # at least three windows
        logits = windowed_logits(feats, torch_window_runner(model), spec)
        assert logits.shape == (output_frames(feats.shape[0]), VOCAB + 1)
        assert torch.isfinite(logits).all()
