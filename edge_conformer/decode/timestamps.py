"""Word start, end and confidence from CTC output.

Two steps (docs/decoding.md has the measurements behind them):

1. Which word, in which order, roughly where: the decoded pieces are force-aligned to the
   utterance's log-probabilities (`torchaudio.functional.forced_align`: the most likely CTC
   path that spells exactly them), and a word is the run of pieces from one that starts with
   "▁" to the next. A CTC model emits each piece as a spike of a frame or two, typically well
   inside the word and late (on the digits recipe a whole-word piece fires ~0.23 s after the
   word starts), so the aligned frames anchor a word but do not bound it.
2. Where it starts and ends: from its anchor, a word extends through the frames that carry
   speech energy (the front end's log-mel power) up to the nearest pause on either side; two
   words with no pause between their anchors meet at the quietest frame there. Speech is a
   frame within SPEECH_RANGE_DB of the loudest one and NOISE_MARGIN_DB above the noise floor;
   shorter pauses than MIN_PAUSE_SECONDS (a stop consonant's closure) stay inside the word.

Times are in seconds at the feature frame rate (10 ms hops in the recipes). Confidence of a
word: the geometric mean of the posterior of its aligned pieces over the encoder frames the
alignment gives them (exp of their mean log-probability): 1 when the model is sure of every
frame, and one doubtful frame pulls it down.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torchaudio.functional as AF

from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.model.subsampling import SUBSAMPLING_FACTOR

WORD_START = "▁"  # SentencePiece's mark of a piece that begins a word
# Chosen on the digits recipe's dev split (clean, and with white noise at 20 and 10 dB SNR);
# benchmarks/decoding.py measures them on test.
SPEECH_RANGE_DB = 40.0
NOISE_MARGIN_DB = 6.0  # above the NOISE_FLOOR_PERCENTILE-th percentile of the frame energies
NOISE_FLOOR_PERCENTILE = 10.0
MIN_PAUSE_SECONDS = 0.03
SMOOTHING_SECONDS = 0.05  # moving average of the frame energy: steadier in noise


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float  # seconds from the start of the audio
    end: float  # seconds
    confidence: float  # in [0, 1]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AlignedWord:
    """A word's pieces, their aligned encoder frames [start, end) and their log-probabilities
    there."""

    token_ids: list[int]
    start: int
    end: int
    frame_log_probs: list[float]


def align_words(
    log_probs: torch.Tensor, token_ids: list[int], tokenizer: Tokenizer
) -> list[AlignedWord]:
    """`token_ids` (SentencePiece ids) aligned to log-probs (frames, vocab + 1), grouped into
    words; [] if there are none, or more than CTC can place in the frames."""
    repeats = sum(a == b for a, b in zip(token_ids, token_ids[1:]))
    if not token_ids or len(token_ids) + repeats > log_probs.shape[0]:
        return []
    targets = torch.tensor([token_ids], dtype=torch.int32) + 1
    emission = log_probs.detach().to(torch.float32).cpu()[None]
    path, scores = AF.forced_align(emission, targets, blank=0)
    spans = AF.merge_tokens(path[0], scores[0], blank=0)
    words: list[AlignedWord] = []
    for token_id, span in zip(token_ids, spans):
        frames = scores[0, span.start : span.end].tolist()
        if tokenizer.sp.id_to_piece(token_id).startswith(WORD_START) or not words:
            words.append(AlignedWord([token_id], span.start, span.end, frames))
        else:
            word = words[-1]
            words[-1] = AlignedWord([*word.token_ids, token_id], word.start, span.end,
                                    word.frame_log_probs + frames)
    return words


def frame_energy_db(log_mel: torch.Tensor, frames_per_second: float) -> torch.Tensor:
    """Mel power in dB of each feature frame of a log-mel (frames, n_mels), smoothed."""
    energy = torch.logsumexp(log_mel.to(torch.float64), dim=1) * (10 / math.log(10))
    width = max(1, round(SMOOTHING_SECONDS * frames_per_second))
    kernel = torch.ones(1, 1, width, dtype=energy.dtype) / width
    padded = torch.nn.functional.pad(energy[None, None], (width // 2, (width - 1) // 2),
                                     mode="replicate")
    return torch.nn.functional.conv1d(padded, kernel)[0, 0]


def speech_frames(energy_db: torch.Tensor, min_pause_frames: int) -> torch.Tensor:
    """Which frames carry speech (bool); pauses shorter than `min_pause_frames` between
    speech are filled in."""
    floor = torch.quantile(energy_db, NOISE_FLOOR_PERCENTILE / 100)
    threshold = max(float(energy_db.max()) - SPEECH_RANGE_DB, float(floor) + NOISE_MARGIN_DB)
    speech = energy_db > threshold
    filled = speech.clone()
    voiced = torch.nonzero(speech).flatten().tolist()
    for before, after in zip(voiced, voiced[1:]):
        if 1 < after - before <= min_pause_frames:
            filled[before + 1 : after] = True
    return filled


def word_bounds(
    anchors: list[tuple[int, int]], energy_db: torch.Tensor, speech: torch.Tensor
) -> list[tuple[int, int]]:
    """Each word's [start, end) in feature frames, from its anchor [start, end) (the aligned
    frames): out to the nearest pause, or to the quietest frame between two anchors that have
    no pause between them."""
    total = len(energy_db)
    starts = [0] * len(anchors)
    ends = [total] * len(anchors)
    for k, (start, _) in enumerate(anchors):
        before = anchors[k - 1][1] if k else 0
        pauses = torch.nonzero(~speech[before:start]).flatten()
        if len(pauses):
            starts[k] = before + int(pauses[-1]) + 1
        elif k:  # speech all the way back to the previous word: they meet at the quietest frame
            gap = energy_db[before:start]
            starts[k] = before + (int(gap.argmin()) if len(gap) else 0)
    for k, (_, end) in enumerate(anchors):
        after = anchors[k + 1][0] if k + 1 < len(anchors) else total
        pauses = torch.nonzero(~speech[end:after]).flatten()
        if len(pauses):
            ends[k] = end + int(pauses[0])
        elif k + 1 < len(anchors):
            ends[k] = starts[k + 1]
    return list(zip(starts, ends))


def word_timings(
    log_probs: torch.Tensor, token_ids: list[int], tokenizer: Tokenizer,
    log_mel: torch.Tensor, frames_per_second: float,
) -> list[WordTiming]:
    """Each decoded word with its start and end (seconds) and its confidence.

    log_probs: the model's (encoder frames, vocab + 1); log_mel: the front end's un-normalised
    log-mel (feature frames, n_mels) of the same audio; frames_per_second: of the features.
    """
    words = [word for word in align_words(log_probs, token_ids, tokenizer)
             if tokenizer.decode(word.token_ids).strip()]  # not a lone "▁"
    if not words:
        return []
    energy = frame_energy_db(log_mel, frames_per_second)
    speech = speech_frames(energy, round(MIN_PAUSE_SECONDS * frames_per_second))
    total = len(energy)
    anchors = [(min(word.start * SUBSAMPLING_FACTOR, total - 1),
                min(word.end * SUBSAMPLING_FACTOR, total)) for word in words]
    timings = []
    for word, (start, end) in zip(words, word_bounds(anchors, energy, speech)):
        confidence = math.exp(sum(word.frame_log_probs) / len(word.frame_log_probs))
        timings.append(WordTiming(tokenizer.decode(word.token_ids).strip(),
                                  round(start / frames_per_second, 3),
                                  round(end / frames_per_second, 3), round(confidence, 4)))
    return timings
