"""Greedy vs beam-search decoding (no lexicon, lexicon, lexicon + LM): WER and decoding time per
second of audio; and the accuracy of word timestamps, on a recipe whose manifests know where
each word starts and ends (the digits recipe's supervisions carry word alignments).

    OMP_NUM_THREADS=1 python benchmarks/decoding.py outputs/digits-xs-depthwise-l2 \\
        --out benchmarks/decoding.md

Each set's log-probabilities are computed once (PyTorch FP32, whole utterances, host features
without dither, as tools/transcribe.py does for a checkpoint), then every decoder runs on the
same ones, on one thread: the time is the decoder's alone. The lexicon and the trigram LM are
built from the recipe's training transcripts (tools/build_lm.py's function); the LM weight and
word score are chosen on --tune-set (dev) from a small grid, never on the reported sets.

Timestamps (greedy transcripts; the words of the utterances whose transcript is right): error of
each word's start and end against the manifest's word alignment,
- "spliced": the take's own boundaries in the spliced audio (FSDD takes hold a little silence
  inside them);
- "trimmed": those boundaries trimmed to the take's first and last 10 ms frame within
  TRIM_RANGE_DB of its loudest one;
for the CTC alignment alone (each word's aligned frames) and for the words as
edge_conformer/decode/timestamps.py bounds them (out to the nearest pause in the energy). The
digits recipe's gaps between takes are digital silence, which makes pauses trivially easy to
find, so the timestamps are measured again with white noise added at --snr dB SNR.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

from edge_conformer.data.audio import read_audio
from edge_conformer.data.manifests import cut_text, load_cuts
from edge_conformer.decode.beam import Decoder, decode_settings, make_decoder
from edge_conformer.decode.metrics import error_rates
from edge_conformer.decode.ngram import build_lexicon_and_lm
from edge_conformer.decode.timestamps import align_words, word_timings
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR
from edge_conformer.runtime.checkpoint import LoadedCheckpoint, load_checkpoint
from edge_conformer.runtime.transcriber import checkpoint_transcriber

TRIM_RANGE_DB = 30.0
LM_WEIGHTS = (0.5, 1.0, 2.0)
WORD_SCORES = (-1.0, 0.0, 1.0, 2.0)


@dataclass(frozen=True)
class Utterance:
    text: str
    waveform: torch.Tensor
    log_probs: torch.Tensor
    log_mel: torch.Tensor
    words: list[tuple[str, float, float, float, float]]  # word, start, end, trimmed start, end


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .ckpt file or a training run directory")
    parser.add_argument("--data-dir", default=None, help="default: the checkpoint's data_dir")
    parser.add_argument("--sets", nargs="+", default=["test", "unseen_speaker"])
    parser.add_argument("--tune-set", default="dev")
    parser.add_argument("--timestamp-set", default="test")
    parser.add_argument("--beam", type=int, default=16)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--max-utterances", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    return parser.parse_args()


def trimmed(waveform: torch.Tensor, rate: int, start: float, end: float) -> tuple[float, float]:
    """[start, end) narrowed to its first and last 10 ms frame within TRIM_RANGE_DB of its
    loudest."""
    hop = rate // 100
    first = round(start * rate)
    span = waveform[first : round(end * rate)]
    frames = span[: len(span) // hop * hop].reshape(-1, hop).double()
    db = 10 * torch.log10(frames.pow(2).mean(1) + 1e-12)
    loud = torch.nonzero(db > db.max() - TRIM_RANGE_DB).flatten()
    return (first + int(loud[0]) * hop) / rate, (first + (int(loud[-1]) + 1) * hop) / rate


def reference_words(cut, waveform: torch.Tensor, rate: int) -> list:
    (supervision,) = cut.supervisions
    items = (supervision.alignment or {}).get("word", [])
    return [(item.symbol, item.start, item.end,
             *trimmed(waveform, rate, item.start, item.end)) for item in items]


def load_set(
    loaded: LoadedCheckpoint, manifest: Path, limit: int | None, snr_db: float | None = None
) -> list[Utterance]:
    """A test set's utterances with the model's log-probs (optionally with white noise at
    `snr_db` over the speech, i.e. the samples that are not digital silence)."""
    rate = loaded.features.sample_rate
    logits = checkpoint_transcriber(loaded, window=None).logits
    generator = torch.Generator().manual_seed(0)
    utterances = []
    for cut in list(load_cuts(manifest))[:limit]:
        clean = read_audio(cut.recording.sources[0].source, rate)
        waveform = clean
        if snr_db is not None:
            speech_rms = clean[clean.abs() > 1e-4].pow(2).mean().sqrt()
            noise = torch.randn(clean.shape, generator=generator)
            waveform = clean + noise * speech_rms * 10 ** (-snr_db / 20)
        with torch.no_grad():
            log_probs = logits(loaded.features(waveform)).log_softmax(-1)
        utterances.append(Utterance(cut_text(cut), waveform, log_probs,
                                    loaded.features.log_mel(waveform),
                                    reference_words(cut, clean, rate)))
    return utterances


def run_decoder(decoder: Decoder, loaded: LoadedCheckpoint, utterances: Sequence[Utterance]
                ) -> tuple[dict[str, float], float]:
    """(WER/CER, decoding seconds per second of audio)."""
    started = time.perf_counter()
    hyps = [loaded.tokenizer.decode(decoder(u.log_probs)) for u in utterances]
    seconds = time.perf_counter() - started
    audio = sum(len(u.waveform) for u in utterances) / loaded.features.sample_rate
    return error_rates([u.text for u in utterances], hyps), seconds / audio


def tuned_lm_settings(loaded, utterances, beam: int, lexicon: Path, lm: Path) -> dict:
    """The LM weight and word score of the lowest WER on `utterances` (ties: the first)."""
    best = None
    for weight, score in itertools.product(LM_WEIGHTS, WORD_SCORES):
        settings = {"beam_size": beam, "lexicon": str(lexicon), "lm": str(lm),
                    "lm_weight": weight, "word_score": score}
        wer = run_decoder(make_decoder(decode_settings(**settings), loaded.tokenizer), loaded,
                          utterances)[0]["wer"]
        if best is None or wer < best[0]:
            best = (wer, settings)
    return best[1]


def timestamp_errors(loaded: LoadedCheckpoint, utterances: Sequence[Utterance]) -> dict:
    """Absolute start/end errors (seconds) per method and reference; utterances used."""
    greedy = make_decoder(decode_settings(), loaded.tokenizer)
    fps = loaded.features.settings.frames_per_second
    frame = SUBSAMPLING_FACTOR / fps
    errors: dict[str, list[float]] = {}
    used = 0
    for u in utterances:
        ids = greedy(u.log_probs)
        aligned = [w for w in align_words(u.log_probs, ids, loaded.tokenizer)
                   if loaded.tokenizer.decode(w.token_ids).strip()]
        bounded = word_timings(u.log_probs, ids, loaded.tokenizer, u.log_mel, fps)
        if [w.word for w in bounded] != [w[0] for w in u.words]:
            continue
        used += 1
        methods = {"CTC alignment": [(w.start * frame, w.end * frame) for w in aligned],
                   "bounded by energy": [(w.start, w.end) for w in bounded]}
        for method, spans in methods.items():
            for (_, start, end, trim_start, trim_end), (hyp_start, hyp_end) in zip(u.words,
                                                                                     spans):
                for key, value in (("spliced start", hyp_start - start),
                                   ("spliced end", hyp_end - end),
                                   ("trimmed start", hyp_start - trim_start),
                                   ("trimmed end", hyp_end - trim_end)):
                    errors.setdefault(f"{method}|{key}", []).append(abs(value))
    return {"used": used, "of": len(utterances), "errors": errors}


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor())
    return f"{model}, {torch.get_num_threads()} thread(s)"


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    tokenizer_dir = tempfile.mkdtemp()
    loaded = load_checkpoint(args.checkpoint, Path(tokenizer_dir))
    data_dir = Path(args.data_dir or loaded.config["data"]["data_dir"])
    train = [cut_text(cut) for cut in load_cuts(data_dir / "cuts_train.jsonl.gz")]
    lexicon, lm = build_lexicon_and_lm(train, loaded.tokenizer, Path(tokenizer_dir) / "lm")
    sets = {name: load_set(loaded, data_dir / f"cuts_{name}.jsonl.gz", args.max_utterances)
            for name in dict.fromkeys([args.tune_set, *args.sets])}
    lm_settings = tuned_lm_settings(loaded, sets[args.tune_set], args.beam, lexicon, lm)
    decoders = {
        "greedy": {},
        f"beam {args.beam}": {"beam_size": args.beam},
        f"beam {args.beam} + lexicon": {"beam_size": args.beam, "lexicon": str(lexicon)},
        f"beam {args.beam} + lexicon + 3-gram LM (weight {lm_settings['lm_weight']}, word score "
        f"{lm_settings['word_score']})": lm_settings,
    }
    lines = [f"# Decoding: {loaded.path}", "",
             f"{date.today()}, {machine()}; `{' '.join(sys.argv)}`", "",
             f"Lexicon: {sum(1 for _ in lexicon.open())} words; LM: interpolated Kneser-Ney "
             f"trigram of {len(train)} training transcripts; LM weight and word score tuned on "
             f"{args.tune_set} over {LM_WEIGHTS} x {WORD_SCORES}.", "",
             "| decoder | " + " | ".join(f"WER {n} | CER {n} | decode s / audio s {n}"
                                         for n in args.sets) + " |",
             "|---|" + "---|---|---|" * len(args.sets)]
    for name, settings in decoders.items():
        decoder = make_decoder(decode_settings(**settings), loaded.tokenizer)
        cells = []
        for set_name in args.sets:
            rates, rtf = run_decoder(decoder, loaded, sets[set_name])
            cells += [f"{rates['wer']:.2f}", f"{rates['cer']:.2f}", f"{rtf:.5f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    lines += ["", f"Word timestamps, {args.timestamp_set} (greedy; absolute error in ms, "
              "median / p90):", "",
              "| audio | method | utterances used | start (spliced) | end (spliced) "
              "| start (trimmed) | end (trimmed) |", "|---|---|---|---|---|---|---|"]
    noisy = load_set(loaded, data_dir / f"cuts_{args.timestamp_set}.jsonl.gz",
                     args.max_utterances, args.snr)
    for audio, utterances in (("clean", sets[args.timestamp_set]),
                              (f"white noise, {args.snr:g} dB SNR", noisy)):
        result = timestamp_errors(loaded, utterances)
        for method in ("CTC alignment", "bounded by energy"):
            cells = []
            for key in ("spliced start", "spliced end", "trimmed start", "trimmed end"):
                values = np.array(result["errors"].get(f"{method}|{key}", [np.nan])) * 1000
                cells.append(f"{np.median(values):.0f} / {np.percentile(values, 90):.0f}")
            lines.append(f"| {audio} | {method} | {result['used']}/{result['of']} | "
                         + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
