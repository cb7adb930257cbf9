"""Transcribe audio files with a checkpoint or an export directory; one line per file.

    python tools/transcribe.py --model outputs/<run>/checkpoints/last.ckpt a.wav b.flac
    python tools/transcribe.py --model exports/digits-xs --format json --beam 16 \\
        --lexicon data/digits/lm/lexicon.txt --lm data/digits/lm/lm.arpa a.wav
    python tools/transcribe.py --model outputs/<run> --windowed a.wav   # as the package sees it
    python tools/transcribe.py --model exports/digits-xs a.wav          # the FP16 package
    python tools/transcribe.py --model exports/digits-xs --stream a.wav # its streaming package
    python tools/transcribe.py --model outputs/<run> --stream --realtime a.wav

A checkpoint (or run directory) runs in PyTorch FP32, on whole utterances unless --windowed
(then with the export defaults of conf/export/default.yaml). An export directory runs its
package: in Core ML on macOS, in the package executor elsewhere (--mode). Any sample rate and
channel count is fine. Prints `path<TAB>transcript`; unreadable files are reported on stderr by
name, and the exit status is then 1. A --model that cannot be read stops it with one line
naming the file.

--format json prints one JSON object per file and line instead: path, text, words (each with
start and end in seconds and a confidence in [0, 1]; docs/decoding.md), model (what ran:
checkpoint or package, precision, windows), decoder, audio_seconds and compute_seconds.
Decoding is greedy unless --beam N: CTC prefix beam search, constrained to the words of
--lexicon and scored with the word n-gram --lm if given (tools/build_lm.py builds both from a
recipe's training transcripts); the other knobs default to conf/decode/default.yaml.

--stream feeds each file to the streaming recogniser (edge_conformer/runtime/streaming.py) in
50 ms pieces, as a microphone would: a checkpoint's chunk loop (--chunk-frames/--left-frames,
default its model.streaming.eval_chunk/eval_left), or an export's stream.mlpackage. It prints
`path<TAB>seconds<TAB>transcript so far` each time a chunk has been recognised (seconds: the
audio fed by then), and then the file's final line: its whole duration and final transcript.
The final line is a file's last: the next line names the next file, or the output ends.
--realtime (implies --stream) feeds the pieces at the speed of speech.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from omegaconf import OmegaConf

from edge_conformer.config.schemas import ConfigError, DecodeSettings
from edge_conformer.data.audio import BadAudioError, read_audio
from edge_conformer.decode.beam import decode_settings
from edge_conformer.errors import UserInputError, exit_on_user_input_error
from edge_conformer.mil.executor import EXECUTOR_MODES
from edge_conformer.runtime.checkpoint import load_checkpoint
from edge_conformer.runtime.streaming import (
    StreamingRecognizer,
    checkpoint_recognizer,
    configured_context,
    export_recognizer,
)
from edge_conformer.runtime.transcriber import (
    RUNTIMES,
    Transcriber,
    checkpoint_transcriber,
    export_transcriber,
    is_export_dir,
)
from edge_conformer.runtime.windowing import WindowSpec

EXPORT_DEFAULTS = Path(__file__).resolve().parents[1] / "conf" / "export" / "default.yaml"
PIECE_SECONDS = 0.05  # --stream feeds audio in pieces this long, as a microphone would
FORMATS = ("lines", "json")
# Each conf/decode knob has a flag: --beam for beam_size, else its name with dashes.
DECODE_KNOBS = tuple(field.name for field in dataclasses.fields(DecodeSettings))
BEAM_FLAG = "--beam"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True,
                        help="a .ckpt, a training run directory, or an export directory")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ...)")
    parser.add_argument("--windowed", action="store_true",
                        help="checkpoint: decode in the export's windows, not whole utterances")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="export dir: auto = Core ML on macOS, the executor elsewhere")
    parser.add_argument("--mode", choices=EXECUTOR_MODES, default="fp16",
                        help="export dir: the executor's arithmetic")
    parser.add_argument("--stream", action="store_true",
                        help="print partial transcripts as the streaming recogniser makes them")
    parser.add_argument("--realtime", action="store_true",
                        help="--stream at the speed of speech (audio time = wall time)")
    parser.add_argument("--chunk-frames", type=int,
                        help="--stream, checkpoint: encoder frames per chunk "
                             "(default: model.streaming.eval_chunk, else 16)")
    parser.add_argument("--left-frames", type=int,
                        help="--stream, checkpoint: encoder frames of left context "
                             "(default: model.streaming.eval_left, else 64)")
    parser.add_argument("--format", choices=FORMATS, default="lines",
                        help="lines: path<TAB>transcript; json: one object per file, with words, "
                             "times, confidences, what ran and timing")
    beam = parser.add_argument_group("beam search (not with --stream)",
                                     "knobs not given take conf/decode/default.yaml's values")
    beam.add_argument(BEAM_FLAG, dest="beam_size", type=int,
                      help="beam size; without it decoding is greedy")
    beam.add_argument("--lexicon", help="lexicon file: output only its words")
    beam.add_argument("--lm", help="word n-gram LM (ARPA or KenLM binary); needs --lexicon")
    beam.add_argument("--lm-weight", type=float)
    beam.add_argument("--word-score", type=float)
    beam.add_argument("--beam-threshold", type=float)
    beam.add_argument("--beam-size-token", type=int)
    args = parser.parse_args()
    args.stream = args.stream or args.realtime
    if args.stream and (args.format != "lines" or any(
            getattr(args, knob) is not None for knob in DECODE_KNOBS)):
        parser.error("--stream prints greedy partial transcripts: --format json and the beam "
                     "search flags need offline decoding")
    geometry_given = args.chunk_frames is not None or args.left_frames is not None
    if geometry_given and not args.stream:
        parser.error("--chunk-frames/--left-frames need --stream")
    if geometry_given and is_export_dir(args.model):
        parser.error("--chunk-frames/--left-frames: an export's streaming package has a fixed "
                     "chunk geometry (frontend.json's streaming section)")
    if args.stream and args.windowed:
        parser.error("--windowed and --stream exclude each other")
    return args


def export_window(frames_per_second: float) -> WindowSpec:
    defaults = OmegaConf.load(EXPORT_DEFAULTS)
    return WindowSpec.from_seconds(
        defaults.window_seconds, defaults.overlap_seconds, frames_per_second
    )


def offline_transcriber(args: argparse.Namespace, tokenizer_dir: Path) -> Transcriber:
    if is_export_dir(args.model):
        return export_transcriber(args.model, args.runtime, args.mode)
    loaded = load_checkpoint(args.model, tokenizer_dir)
    frames_per_second = loaded.features.settings.frames_per_second
    window = export_window(frames_per_second) if args.windowed else None
    return checkpoint_transcriber(loaded, window)


def chosen_decoding(args: argparse.Namespace) -> DecodeSettings:
    """conf/decode/default.yaml with the flags given; a bad value stops with one line."""
    try:
        return decode_settings(**{knob: getattr(args, knob) for knob in DECODE_KNOBS})
    except ConfigError as error:  # "knob=value rule": name the flag the user gave
        knob = str(error).split("=", 1)[0]
        flag = BEAM_FLAG if knob == "beam_size" else "--" + knob.replace("_", "-")
        raise UserInputError(f"{flag}: {error}") from error


def stream_recognizer(args: argparse.Namespace, tokenizer_dir: Path) -> StreamingRecognizer:
    if is_export_dir(args.model):
        return export_recognizer(args.model, args.runtime, args.mode)
    loaded = load_checkpoint(args.model, tokenizer_dir)
    try:
        context = configured_context(loaded.config["model"], args.chunk_frames, args.left_frames)
    except ValueError as error:
        raise UserInputError(f"--chunk-frames/--left-frames: {error}") from error
    return checkpoint_recognizer(loaded, context)


def stream_file(
    recognizer: StreamingRecognizer, path: str, realtime: bool
) -> Iterator[tuple[float, str]]:
    """(audio seconds, transcript so far) each time a chunk of `path` has been recognised,
    then (its duration, its final transcript)."""
    waveform = read_audio(path, recognizer.sample_rate)
    rate = recognizer.sample_rate
    piece = round(PIECE_SECONDS * rate)
    started = time.monotonic()
    for start in range(0, len(waveform), piece):
        samples = waveform[start : start + piece]
        if realtime:  # a microphone delivers a piece once it has been spoken
            time.sleep(max(0.0, started + (start + len(samples)) / rate - time.monotonic()))
        text = recognizer.accept(samples)
        if text is not None:
            yield recognizer.audio_seconds, text
    seconds = recognizer.audio_seconds
    yield seconds, recognizer.finish()


def transcribe_all(files: list[str], lines_of: Callable[[str], Iterable[str]]) -> int:
    """Print each file's lines as they come; name the unreadable ones on stderr. Returns how
    many files failed."""
    failed = 0
    for path in files:
        try:
            for line in lines_of(path):
                print(line, flush=True)
        except BadAudioError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return failed


@exit_on_user_input_error
def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        if args.stream:
            recognizer = stream_recognizer(args, Path(tokenizer_dir))
            description = recognizer.description
            lines_of = lambda path: (
                f"{path}\t{seconds:.2f}\t{text}"
                for seconds, text in stream_file(recognizer, path, args.realtime)
            )
        else:
            settings = chosen_decoding(args)
            transcribe = offline_transcriber(args, Path(tokenizer_dir)).with_decoding(settings)
            description = f"{transcribe.description}; {transcribe.decoder.description}"
            if args.format == "json":
                lines_of = lambda path: [json.dumps(transcribe(path).to_json())]
            else:
                lines_of = lambda path: [f"{path}\t{transcribe(path).text}"]
        print(f"# {description}", file=sys.stderr)
        failed = transcribe_all(args.files, lines_of)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
