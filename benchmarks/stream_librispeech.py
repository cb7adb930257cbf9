"""Long utterances: a checkpoint streaming whole LibriSpeech utterances vs recognising 8 s windows.

Every utterance of `--corpus` (the 100-utterance test-other subset in ../shared/data, 2-23 s)
is recognised (greedy CTC) three ways by the checkpoint's FP32 model:

- full context: the training graph on the whole utterance;
- windows: the training graph window by window, stitched (runtime/windowing.py), with the
  offline package's window and overlap (conf/export/default.yaml: 8 s, 2 s): what
  model.mlpackage recognises, in FP32;
- streaming: the streaming recogniser (`checkpoint_recognizer`: the streaming front end, the
  chunk loop, incremental greedy CTC) fed the audio in `--piece-ms` pieces, at the
  checkpoint's deployed chunk context (model.streaming.eval_chunk / eval_left) unless
  `--chunk-frames` / `--left-frames` say otherwise: every utterance whole, no windows.

WER over all utterances, those that fit one window and those longer, and each way's real-time
factor (one thread). Any streamable checkpoint works (model.conv_context chunk or causal,
data.features.normalize global or none); audio is resampled to its rate and references are
lower-cased, as the LibriSpeech recipe does.

    python benchmarks/stream_librispeech.py outputs/<librispeech streaming run> --out ls.md
    python benchmarks/stream_librispeech.py /tmp/j_tiny --max-utterances 5    # smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf
from stream_wer import log, markdown_table

from edge_conformer.data.audio import read_audio
from edge_conformer.data.corpora.librispeech import read_split
from edge_conformer.decode import decode_logits, error_rates
from edge_conformer.model import count_parameters
from edge_conformer.runtime.checkpoint import LoadedCheckpoint, load_checkpoint
from edge_conformer.runtime.streaming import (
    StreamingRecognizer,
    checkpoint_recognizer,
    configured_context,
    geometry,
)
from edge_conformer.runtime.windowing import (
    WindowSpec,
    torch_window_runner,
    whole_utterance_logits,
    windowed_logits,
)

WAYS = ("full context", "windows", "streaming")
REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a training run directory")
    parser.add_argument("--corpus", type=Path,
                        default=REPO.parent / "shared/data/LibriSpeech/test-other",
                        help="a LibriSpeech split directory (<speaker>/<chapter>/*.flac)")
    parser.add_argument("--max-utterances", type=int, default=None)
    parser.add_argument("--chunk-frames", type=int, default=None)
    parser.add_argument("--left-frames", type=int, default=None)
    parser.add_argument("--piece-ms", type=float, default=100.0,
                        help="audio fed to the streaming recogniser at a time")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    return parser.parse_args()


def offline_window(loaded: LoadedCheckpoint) -> WindowSpec:
    export_defaults = OmegaConf.load(REPO / "conf" / "export" / "default.yaml")
    return WindowSpec.from_seconds(
        export_defaults.window_seconds, export_defaults.overlap_seconds,
        loaded.features.settings.frames_per_second,
    )


def recognisers(loaded: LoadedCheckpoint, window: WindowSpec, recogniser: StreamingRecognizer,
                piece_samples: int
                ) -> dict[str, Callable[[torch.Tensor], str]]:
    """Waveform -> transcript, each way (see the module doc)."""
    model, tokenizer, features = loaded.model, loaded.tokenizer, loaded.features
    run_window = torch_window_runner(model)

    def streamed(waveform: torch.Tensor) -> str:
        for start in range(0, len(waveform), piece_samples):
            recogniser.accept(waveform[start : start + piece_samples])
        return recogniser.finish()

    return {
        "full context": lambda w: decode_logits(whole_utterance_logits(model, features(w)),
                                                tokenizer),
        "windows": lambda w: decode_logits(windowed_logits(features(w), run_window, window),
                                           tokenizer),
        "streaming": streamed,
    }


def wer_rows(texts: Sequence[str], durations: Sequence[float], hyps: dict[str, list[str]],
             window_seconds: float) -> list[list[str]]:
    groups = {
        "all": [True] * len(texts),
        f"at most {window_seconds:g} s": [d <= window_seconds for d in durations],
        f"longer than {window_seconds:g} s": [d > window_seconds for d in durations],
    }
    rows = []
    for label, chosen in groups.items():
        refs = [t for t, keep in zip(texts, chosen, strict=True) if keep]
        row = [f"{label} ({len(refs)})"]
        for way in WAYS:
            picked = [h for h, keep in zip(hyps[way], chosen, strict=True) if keep]
            row.append(f"{error_rates(refs, picked)['wer']:.2f}" if refs else "–")
        rows.append(row)
    return rows


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # see stream_wer.py: the shared 2-core machine
    utterances = [u for u in read_split(args.corpus) if u.text]
    utterances = utterances[: args.max_utterances]
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        loaded = load_checkpoint(args.checkpoint, tokenizer_dir=Path(tokenizer_dir))
    context = configured_context(loaded.config["model"], args.chunk_frames, args.left_frames)
    recogniser = checkpoint_recognizer(loaded, context)
    window = offline_window(loaded)
    rate = loaded.features.sample_rate
    ways = recognisers(loaded, window, recogniser, round(args.piece_ms * rate / 1000))

    hyps: dict[str, list[str]] = {way: [] for way in WAYS}
    seconds = dict.fromkeys(WAYS, 0.0)
    durations = []
    for index, utt in enumerate(utterances):
        waveform = read_audio(utt.audio_path, rate)
        durations.append(len(waveform) / rate)
        for way, recognise in ways.items():
            started = time.perf_counter()
            hyps[way].append(recognise(waveform))
            seconds[way] += time.perf_counter() - started
        log(f"{index + 1}/{len(utterances)} {utt.utt_id}")

    audio = sum(durations)
    window_seconds = window.window_frames / loaded.features.settings.frames_per_second
    header = ["utterances", *(f"WER % {way}" for way in WAYS)]
    rows = wer_rows([u.text for u in utterances], durations, hyps, window_seconds)
    rows.append(["RTF (one thread)", *(f"{seconds[way] / audio:.3f}" for way in WAYS)])
    text = "\n".join([
        f"Checkpoint `{loaded.path}` ({loaded.model.name}, "
        f"{count_parameters(loaded.model) / 1e6:.2f}M parameters, vocabulary "
        f"{loaded.tokenizer.vocab_size}); {len(utterances)} utterances of {args.corpus} "
        f"({audio:.0f} s); windows of {window_seconds:g} s; streaming: "
        f"{geometry(context, loaded.features)}, {args.piece_ms:g} ms pieces; greedy CTC, FP32.",
        "",
        *markdown_table(header, rows),
    ]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
