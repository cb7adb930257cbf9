"""SentencePiece tokenizer trained by each recipe on its training transcripts.

Token ids are SentencePiece ids; the CTC blank is prepended by the model (logit index 0), so
CTC targets are `ids + 1`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm


class Tokenizer:
    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: tokenizer model not found")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(list(ids))


def train_tokenizer(
    texts: Iterable[str], model_path: str | Path, vocab_size: int, model_type: str = "unigram"
) -> Tokenizer:
    """Train a SentencePiece model on `texts` and write it to `model_path`."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        # Small corpora (the digits recipe has ten words) cannot fill a large vocabulary.
        hard_vocab_limit=False,
        minloglevel=2,
    )
    model_path.write_bytes(model.getvalue())
    return Tokenizer(model_path)
