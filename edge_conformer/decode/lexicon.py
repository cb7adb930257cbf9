"""The lexicon of beam search: the words it may output, each spelled in the tokenizer's pieces.

File format (flashlight's, which torchaudio's `ctc_decoder` reads): one spelling per line, the
word, then its SentencePiece pieces separated by spaces; a word may have several lines.

    three	▁three
    oh	▁ o h

A recipe's lexicon holds the words of its training transcripts spelled as the tokenizer
encodes them (`lexicon_from_texts`). A user's lexicon is checked against the model's tokenizer
(`read_lexicon`): every piece must be one the tokenizer has, none its unknown piece, and the
pieces must read back as the word, else the decoder could output a word the model never spells.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.errors import UserInputError

Lexicon = dict[str, list[tuple[str, ...]]]  # word -> its spellings, each a tuple of pieces


def spelling_problem(word: str, pieces: tuple[str, ...], tokenizer: Tokenizer) -> str | None:
    """Why the tokenizer cannot produce `word` as `pieces`, or None if it can."""
    sp = tokenizer.sp
    unknown = [piece for piece in pieces if sp.piece_to_id(piece) == sp.unk_id()]
    if unknown:
        return (f"word {word!r} is spelled with {' '.join(unknown)}, which the tokenizer "
                f"{tokenizer.model_path.name} does not have (it reads as the unknown piece)")
    read_back = tokenizer.decode(sp.piece_to_id(list(pieces)))
    if read_back != word:
        return f"word {word!r} is spelled {' '.join(pieces)}, which the tokenizer reads as " \
               f"{read_back!r}"
    return None


def lexicon_from_texts(texts: Iterable[str], tokenizer: Tokenizer) -> Lexicon:
    """Every word of `texts`, spelled as the tokenizer encodes it; ValueError for a word it
    cannot encode (a character outside its vocabulary)."""
    words = sorted({word for text in texts for word in text.split()})
    lexicon: Lexicon = {}
    for word in words:
        pieces = tuple(tokenizer.sp.encode(word, out_type=str))
        problem = spelling_problem(word, pieces, tokenizer)
        if problem:
            raise ValueError(problem)
        lexicon[word] = [pieces]
    return lexicon


def write_lexicon(lexicon: Lexicon, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{word}\t{' '.join(pieces)}" for word, spellings in lexicon.items()
             for pieces in spellings]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_lexicon(path: str | Path, tokenizer: Tokenizer) -> Lexicon:
    """The lexicon in `path`, checked against `tokenizer`; UserInputError naming the file (and
    line) if it is missing, empty, or spells a word with pieces the tokenizer cannot produce."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: unreadable lexicon ({type(error).__name__})") from error
    lexicon: Lexicon = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        word, *pieces = line.split()
        if not pieces:
            raise UserInputError(f"{path}:{number}: word {word!r} has no spelling (a lexicon "
                                 "line is the word, then its tokenizer pieces)")
        problem = spelling_problem(word, tuple(pieces), tokenizer)
        if problem:
            raise UserInputError(f"{path}:{number}: {problem}")
        lexicon.setdefault(word, []).append(tuple(pieces))
    if not lexicon:
        raise UserInputError(f"{path}: empty lexicon")
    return lexicon
