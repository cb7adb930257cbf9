"""What streaming costs a trained checkpoint in WER, and how much later it emits each token.

For every chunk size in `--chunks` (encoder frames; 4 8 16 32 = 160-1280 ms) and left context in
`--lefts` (32 64 -1; -1 = every past frame), each test set of the checkpoint's recipe is decoded
(greedy CTC) two ways that must agree:

- the masked full forward (`ConformerCTC.forward(feats, lengths, context)`), batched;
- the chunk loop (`stream_logits`: `forward_chunk` from zero caches), batched;

beside full context (the offline model). The table gives each way's WER and the number of
utterances whose two transcripts differ (expected 0). Features are the host's (no dither), as
export's parity computes them (`featurised_utterances`); test sets and their manifests come from
the checkpoint's config as export finds them (`export.pipeline._test_cuts`).

Emission delay, on `--delay-set` (test): the greedy CTC path of a logit sequence emits a token
at the first frame of each run of one non-blank class (a frame whose best class is not blank
and differs from the previous frame's). Over the utterances whose full-context and streaming
transcripts both equal the reference and consist of the same tokens, the k-th token's
- spike delay = (streaming emission frame - full-context emission frame) x 40 ms: how much
  later the chunked model places its spike;
- available delay = (end of the chunk holding the streaming emission frame, capped at the
  utterance's last frame - full-context emission frame) x 40 ms: how much later than the
  full-context spike the chunk that emits the token has all its frames (a chunk is recognised
  once all of it has arrived). Compute and the front end's look-ahead come on top of both.
Median and 90th percentile over all such tokens, at every chunk context (from the masked
forward's logits, which the chunk loop's equal).

    python benchmarks/stream_wer.py outputs/digits-xs-depthwise-l2 --out stream_wer.md
    python benchmarks/stream_wer.py /tmp/j_tiny --max-utterances 20 --chunks 16 --lefts 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from edge_conformer.config.schemas import ExportSettings
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode import decode_logits, error_rates
from edge_conformer.export.parity import EvalUtterance, featurised_utterances
from edge_conformer.export.pipeline import _test_cuts
from edge_conformer.model import ConformerCTC, count_parameters
from edge_conformer.model.streaming import ChunkContext, stream_logits
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR, output_frames
from edge_conformer.runtime.bundle import BLANK_INDEX
from edge_conformer.runtime.checkpoint import LoadedCheckpoint, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BATCH = 32  # utterances per forward
# Logits of utterances (features (T, n_mels)) -> one (output_frames(T), vocab + 1) each.
BatchLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a training run directory")
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--lefts", type=int, nargs="+", default=[32, 64, -1],
                        help="left context in encoder frames; -1: unlimited")
    parser.add_argument("--test-sets", nargs="+", default=None,
                        help="default: the checkpoint's data.test_splits")
    parser.add_argument("--max-utterances", type=int, default=None, help="first N of each set")
    parser.add_argument("--data-dir", default=None, help="default: the checkpoint's data_dir")
    parser.add_argument("--delay-set", default="test", help="test set of the emission delays")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    return parser.parse_args()


def test_utterances(
    loaded: LoadedCheckpoint, names: Sequence[str] | None, max_utterances: int | None,
    data_dir: str | None,
) -> dict[str, list[EvalUtterance]]:
    """The recipe's test sets as export's parity reads them, featurised on the host."""
    settings = OmegaConf.to_object(OmegaConf.merge(
        OmegaConf.structured(ExportSettings), OmegaConf.load(REPO / "conf/export/default.yaml"),
        {"test_sets": names, "max_utterances": max_utterances, "data_dir": data_dir},
    ))
    return {name: list(featurised_utterances(cuts, loaded.features))
            for name, cuts in _test_cuts(loaded, settings).items()}


def batches(utterances: Sequence[EvalUtterance]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Zero-padded features (B, T, n_mels) and their lengths, BATCH utterances at a time."""
    for start in range(0, len(utterances), BATCH):
        features = [u.features for u in utterances[start : start + BATCH]]
        lengths = torch.tensor([len(f) for f in features])
        yield torch.nn.utils.rnn.pad_sequence(features, batch_first=True), lengths


def masked_forward(model: ConformerCTC, context: ChunkContext | None) -> BatchLogits:
    """The full forward, under `context`'s chunk mask (None: full context)."""
    return lambda feats, lengths: model(feats, lengths, context)[0]


def chunk_loop(model: ConformerCTC, context: ChunkContext) -> BatchLogits:
    return lambda feats, lengths: stream_logits(model, feats, context, lengths)


@torch.no_grad()
def utterance_logits(run: BatchLogits, utterances: Sequence[EvalUtterance]) -> list[torch.Tensor]:
    """Each utterance's logits, its padding frames cut off."""
    logits = []
    for feats, lengths in batches(utterances):
        out = run(feats, lengths)
        logits += [out[i, : output_frames(int(n))] for i, n in enumerate(lengths)]
    return logits


def word_error_rate(utterances: Sequence[EvalUtterance], hyps: Sequence[str]) -> float:
    return error_rates([u.text for u in utterances], hyps)["wer"]


def emissions(logits: torch.Tensor) -> tuple[list[int], list[int]]:
    """Greedy CTC's (tokens, emission frames): the first frame of each non-blank run."""
    best = logits.argmax(dim=-1)
    previous = torch.cat([torch.tensor([BLANK_INDEX]), best[:-1]])
    frames = ((best != previous) & (best != BLANK_INDEX)).nonzero()[:, 0]
    return best[frames].tolist(), frames.tolist()


@dataclass(frozen=True)
class Delays:
    utterances: int  # used: both transcripts right, same tokens
    of: int  # in the set
    spike_ms: np.ndarray  # per token
    available_ms: np.ndarray


def emission_delays(
    full: Sequence[torch.Tensor], streamed: Sequence[torch.Tensor],
    utterances: Sequence[EvalUtterance], tokenizer: Tokenizer, chunk_frames: int,
    frame_ms: float,
) -> Delays:
    """Per-token emission delays of `streamed` logits behind `full` ones (see the module doc)."""
    spike, available, used = [], [], 0
    for full_logits, stream_logits_, utt in zip(full, streamed, utterances, strict=True):
        full_tokens, full_frames = emissions(full_logits)
        stream_tokens, stream_frames = emissions(stream_logits_)
        right = decode_logits(full_logits, tokenizer) == utt.text == decode_logits(
            stream_logits_, tokenizer)
        if not right or full_tokens != stream_tokens:
            continue
        used += 1
        last_frame = len(full_logits)
        for f, s in zip(full_frames, stream_frames, strict=True):
            chunk_end = min((s // chunk_frames + 1) * chunk_frames, last_frame)
            spike.append((s - f) * frame_ms)
            available.append((chunk_end - f) * frame_ms)
    return Delays(used, len(utterances), np.array(spike), np.array(available))


def median_p90(values: np.ndarray) -> list[str]:
    if not values.size:
        return ["–", "–"]
    return [f"{np.median(values):.0f}", f"{np.percentile(values, 90):.0f}"]


def context_label(context: ChunkContext, frame_ms: float) -> tuple[str, str]:
    chunk = f"{context.chunk_frames} ({context.chunk_frames * frame_ms:.0f} ms)"
    if context.left_frames < 0:
        return chunk, "unlimited"
    return chunk, f"{context.left_frames} ({context.left_frames * frame_ms / 1000:.2f} s)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    args = parse_args()
    # One thread: on a 2-core machine shared with other jobs, a second one contends and made
    # the chunk loop's many small ops 4x slower.
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        loaded = load_checkpoint(args.checkpoint, tokenizer_dir=Path(tokenizer_dir))
        sets = test_utterances(loaded, args.test_sets, args.max_utterances, args.data_dir)
    if args.delay_set not in sets:
        raise SystemExit(f"--delay-set {args.delay_set}: not among the test sets {list(sets)}")
    model, tokenizer = loaded.model, loaded.tokenizer
    frame_ms = 1000 * SUBSAMPLING_FACTOR / loaded.features.settings.frames_per_second
    contexts = [ChunkContext(c, left) for c in args.chunks for left in args.lefts
                if left < 0 or left >= c]  # a left context is whole chunks, at least one

    def transcripts(logits: list[torch.Tensor]) -> list[str]:
        return [decode_logits(item, tokenizer) for item in logits]

    full_logits = {name: utterance_logits(masked_forward(model, None), utts)
                   for name, utts in sets.items()}
    header = ["chunk", "left"]
    for name in sets:
        header += [f"{name} WER % masked", "chunk loop", "differ"]
    full_row = ["full context", "–"]
    for name, utts in sets.items():
        full_row += [f"{word_error_rate(utts, transcripts(full_logits[name])):.2f}", "–", "–"]
    rows, delay_rows = [full_row], []
    for context in contexts:
        row = list(context_label(context, frame_ms))
        for name, utts in sets.items():
            masked = utterance_logits(masked_forward(model, context), utts)
            masked_hyps = transcripts(masked)
            loop_hyps = transcripts(utterance_logits(chunk_loop(model, context), utts))
            differ = sum(a != b for a, b in zip(masked_hyps, loop_hyps, strict=True))
            row += [f"{word_error_rate(utts, masked_hyps):.2f}",
                    f"{word_error_rate(utts, loop_hyps):.2f}", str(differ)]
            if name == args.delay_set:
                delays = emission_delays(full_logits[name], masked, utts, tokenizer,
                                         context.chunk_frames, frame_ms)
                delay_rows.append([*context_label(context, frame_ms),
                                   f"{delays.utterances} / {delays.of}",
                                   str(delays.spike_ms.size), *median_p90(delays.spike_ms),
                                   *median_p90(delays.available_ms)])
        rows.append(row)
        log(f"chunk {context.chunk_frames} left {context.left_frames}: {' '.join(row[2:])} "
            f"({time.perf_counter() - started:.0f} s)")

    sizes = ", ".join(f"{name} {len(utts)}" for name, utts in sets.items())
    lines = [
        f"Checkpoint `{loaded.path}` ({model.name}, {count_parameters(model) / 1e6:.2f}M "
        f"parameters, conv_context {model.conv_context}, features normalize "
        f"{loaded.features.settings.normalize}); utterances: {sizes}; greedy CTC, WER in %; "
        "chunk and left in encoder frames (40 ms). 'differ': utterances whose chunk-loop "
        "transcript differs from the masked forward's.",
        "",
        *markdown_table(header, rows),
        "",
        f"Emission delay on {args.delay_set} (ms; tokens of utterances whose full-context and "
        "streaming transcripts are both right, with the same tokens):",
        "",
        *markdown_table(["chunk", "left", "utterances used", "tokens", "spike delay median",
                         "p90", "available delay median", "p90"], delay_rows),
        "",
        f"({time.perf_counter() - started:.0f} s)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


if __name__ == "__main__":
    main()
