"""Transcribe audio files with a checkpoint or an export directory; one line per file.

    python tools/transcribe.py --model outputs/<run>/checkpoints/last.ckpt a.wav b.flac
    python tools/transcribe.py --model outputs/<run> --windowed a.wav   # as the package sees it
    python tools/transcribe.py --model exports/digits-xs a.wav          # the FP16 package

A checkpoint (or run directory) runs in PyTorch FP32, on whole utterances unless --windowed
(then with the export defaults of conf/export/default.yaml). An export directory runs its
package: in Core ML on macOS, in the package executor elsewhere (--mode). Any sample rate and
channel count is fine. Prints `path<TAB>transcript`; unreadable files are reported on stderr by
name, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from edge_conformer.data.audio import BadAudioError
from edge_conformer.mil.executor import EXECUTOR_MODES
from edge_conformer.runtime.checkpoint import load_checkpoint
from edge_conformer.runtime.transcriber import (
    RUNTIMES,
    checkpoint_transcriber,
    export_transcriber,
    is_export_dir,
)
from edge_conformer.runtime.windowing import WindowSpec

EXPORT_DEFAULTS = Path(__file__).resolve().parents[1] / "conf" / "export" / "default.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="a .ckpt, a training run directory, or an export directory")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ...)")
    parser.add_argument("--windowed", action="store_true",
                        help="checkpoint: decode in the export's windows, not whole utterances")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="export dir: auto = Core ML on macOS, the executor elsewhere")
    parser.add_argument("--mode", choices=EXECUTOR_MODES, default="fp16",
                        help="export dir: the executor's arithmetic")
    return parser.parse_args()


def export_window(frames_per_second: float) -> WindowSpec:
    defaults = OmegaConf.load(EXPORT_DEFAULTS)
    return WindowSpec.from_seconds(
        defaults.window_seconds, defaults.overlap_seconds, frames_per_second
    )


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        if is_export_dir(args.model):
            transcribe = export_transcriber(args.model, args.runtime, args.mode)
        else:
            loaded = load_checkpoint(args.model, Path(tokenizer_dir))
            frames_per_second = loaded.features.sample_rate / loaded.features.hop_length
            window = export_window(frames_per_second) if args.windowed else None
            transcribe = checkpoint_transcriber(loaded, window)
        print(f"# {transcribe.description}", file=sys.stderr)
        failed = 0
        for path in args.files:
            try:
                print(f"{path}\t{transcribe(path)}", flush=True)
            except BadAudioError as error:
                print(f"error: {error}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
