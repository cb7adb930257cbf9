"""From CTC log-probabilities to token ids: greedy (the default), or CTC prefix beam search with
an optional lexicon and word n-gram LM (torchaudio's `ctc_decoder`, i.e. flashlight-text).

Both return SentencePiece ids, so the transcript (`Tokenizer.decode`) and the word timestamps
(timestamps.py) come out of one path whichever decoder ran. Settings are conf/decode's
(`DecodeSettings`, checked by its schema).

The decoder's tokens are the model's output classes: index 0 the CTC blank, index i + 1
SentencePiece piece i. SentencePiece has no word-separator token of its own: "▁" begins a
word's first piece, and stands alone in spellings such as "▁ o h". So the blank doubles as the
decoder's silence token (flashlight lets silence be emitted between words, and in CTC that is
what the blank means), and the lexicon's spellings mark where words start and end.

The decoder spells each word with a silence (the blank) after its pieces, as letter lexicons
end each word with their separator "|". Without it, a word would end the moment its last piece
is emitted, and flashlight's lexicon search, back at the trie's root, may then only emit
silence: a last piece could not last two frames, and a two-frame spike of "▁six" decoded as
"six three" on the digits model. The cost: a word's last piece must be followed by a blank
frame before the next word's first piece, and the utterance must end on one (CTC nearly always
puts one there).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from edge_conformer.config.schemas import DecodeSettings
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode.ctc import greedy_ctc_decode
from edge_conformer.decode.lexicon import read_lexicon, write_lexicon
from edge_conformer.decode.ngram import check_lm_file
from edge_conformer.errors import UserInputError

DECODE_DEFAULTS = Path(__file__).resolve().parents[2] / "conf" / "decode" / "default.yaml"
BLANK_TOKEN = "<ctc-blank>"  # the decoder's name for logit 0; SentencePiece has no such piece


@dataclass(frozen=True)
class Decoder:
    """log-probs (frames, vocab + 1) of one utterance -> its SentencePiece ids."""

    decode: Callable[[torch.Tensor], list[int]]
    description: str  # what runs, for the user: "greedy" or the beam's settings

    def __call__(self, log_probs: torch.Tensor) -> list[int]:
        return self.decode(log_probs)


def decode_settings(**overrides: object) -> DecodeSettings:
    """conf/decode/default.yaml with `overrides` (None values ignored), checked by the schema
    (ConfigError naming the knob)."""
    config = OmegaConf.merge(OmegaConf.structured(DecodeSettings), OmegaConf.load(DECODE_DEFAULTS))
    config.merge_with({key: value for key, value in overrides.items() if value is not None})
    return OmegaConf.to_object(config)


def greedy_decoder() -> Decoder:
    def decode(log_probs: torch.Tensor) -> list[int]:
        return greedy_ctc_decode(log_probs[None], torch.tensor([log_probs.shape[0]]))[0]

    return Decoder(decode, "greedy")


def make_decoder(settings: DecodeSettings, tokenizer: Tokenizer) -> Decoder:
    """The greedy decoder, or beam search as `settings` describe it; UserInputError naming the
    lexicon or LM file if it cannot be used."""
    return greedy_decoder() if settings.beam_size is None else beam_decoder(settings, tokenizer)


def decoder_tokens(tokenizer: Tokenizer) -> list[str]:
    """The name of each output class, in logit order: the blank, then every piece."""
    return [BLANK_TOKEN, *(tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size))]


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: KenLM prints its loading progress bar there from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def beam_decoder(settings: DecodeSettings, tokenizer: Tokenizer) -> Decoder:
    from torchaudio.models.decoder import ctc_decoder  # needs flashlight-text

    lexicon = read_lexicon(settings.lexicon, tokenizer) if settings.lexicon else None
    lm = str(check_lm_file(settings.lm)) if settings.lm else None
    try:
        with quiet_stderr(), tempfile.TemporaryDirectory() as scratch:
            spelled = None
            if lexicon is not None:  # each spelling ends in a silence (see above)
                spelled = str(write_lexicon(
                    {word: [(*pieces, BLANK_TOKEN) for pieces in spellings]
                     for word, spellings in lexicon.items()}, Path(scratch) / "lexicon.txt"))
            search = ctc_decoder(
                lexicon=spelled, tokens=decoder_tokens(tokenizer), lm=lm,
                beam_size=settings.beam_size, beam_size_token=settings.beam_size_token,
                beam_threshold=settings.beam_threshold, lm_weight=settings.lm_weight,
                word_score=settings.word_score, blank_token=BLANK_TOKEN, sil_token=BLANK_TOKEN,
            )
    except RuntimeError as error:  # KenLM's reader: missing, truncated or malformed
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise UserInputError(f"{settings.lm}: unreadable language model "
                             f"({lines[-1].strip() if lines else type(error).__name__})") from error

    def decode(log_probs: torch.Tensor) -> list[int]:
        emissions = log_probs.detach().to(torch.float32).cpu().contiguous()[None]
        (hypotheses,) = search(emissions, torch.tensor([emissions.shape[1]]))
        # tokens: the best path with repeats merged and blanks (= silences) dropped.
        return (hypotheses[0].tokens - 1).tolist() if hypotheses else []

    parts = [f"beam {settings.beam_size}"]
    if lexicon is not None:
        parts.append(f"lexicon {settings.lexicon} ({len(lexicon)} words)")
    if lm is not None:
        parts.append(f"LM {lm} (weight {settings.lm_weight})")
    if lexicon is not None:
        parts.append(f"word score {settings.word_score}")
    return Decoder(decode, "beam search: " + ", ".join(parts))


def decode_text(decoder: Decoder, logits: torch.Tensor, tokenizer: Tokenizer) -> str:
    """The transcript `decoder` makes of one utterance's logits (frames, vocab + 1), e.g. to
    report beam-search WER beside greedy's from logits already computed."""
    return tokenizer.decode(decoder(logits.float().log_softmax(dim=-1)))
