"""Word n-gram language models in ARPA format: a small interpolated Kneser-Ney builder, and the
check that an LM file (ARPA or KenLM binary) loads.

Why a builder of our own: KenLM's `lmplz` is a C++ program that no registry we install from
ships (its pip package only queries models), IRSTLM is a Debian package without a pip or macOS
counterpart, and the pure-Python `arpabo` on PyPI writes models that do not normalise (unigram
mass above 1, every back-off weight 1). The recipes' transcripts are small (the digits recipe
has ten words), so a few dozen lines of Python build them in well under a second. A user with a
large text corpus brings a `lmplz` model instead (ARPA or binary): the decoder reads either.

The model is interpolated Kneser-Ney (Chen & Goodman 1998, one discount per order from the
counts of counts), written in ARPA's back-off form, which is exact for interpolated models: a
seen n-gram stores its interpolated probability, and its context's back-off weight is the mass
the discount freed, gamma(h) = D * N1+(h .) / c(h .).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode.lexicon import lexicon_from_texts, write_lexicon
from edge_conformer.errors import UserInputError

SENTENCE_START = "<s>"
SENTENCE_END = "</s>"
UNKNOWN_WORD = "<unk>"
LOG10_ZERO = -99.0  # ARPA's "never": <s> is a context, never predicted
FALLBACK_DISCOUNT = 0.5  # when an order has no singletons or no doubletons to estimate D from
KENLM_BINARY_MAGIC = b"mmap lm "  # the first bytes of a KenLM binary model
LEXICON_FILE = "lexicon.txt"  # the names build_lexicon_and_lm gives its files
LM_FILE = "lm.arpa"

Ngram = tuple[str, ...]


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> Counter[Ngram]:
    """Counts of the highest-order n-grams, and of the shorter ones a sentence starts with
    (<s> has no left context, so those keep raw counts at every order, as in KenLM)."""
    counts: Counter[Ngram] = Counter()
    for words in sentences:
        padded = (SENTENCE_START, *words, SENTENCE_END)
        for end in range(2, len(padded) + 1):
            start = max(0, end - order)
            counts[padded[start:end]] += 1
    return counts


def adjusted_counts(counts: Counter[Ngram], order: int) -> list[Counter[Ngram]]:
    """Kneser-Ney's counts per order (index n-1 for order n): raw counts at the highest order
    and for n-grams that start a sentence, else the number of distinct words seen before it."""
    by_order: list[Counter[Ngram]] = [Counter() for _ in range(order)]
    for ngram, count in counts.items():
        by_order[len(ngram) - 1][ngram] += count
    for n in range(order, 1, -1):  # orders n-1 down to 1 from order n's n-grams
        for ngram in by_order[n - 1]:
            suffix = ngram[1:]
            if suffix[0] != SENTENCE_START:
                by_order[n - 2][suffix] += 1
    return by_order


def discount(counts: Counter[Ngram]) -> float:
    """D = n1 / (n1 + 2 n2) from the counts of counts; needs singletons and doubletons."""
    of_counts = Counter(counts.values())
    n1, n2 = of_counts[1], of_counts[2]
    return n1 / (n1 + 2 * n2) if n1 and n2 else FALLBACK_DISCOUNT


def interpolated_kneser_ney(
    sentences: Iterable[Sequence[str]], order: int
) -> tuple[list[dict[Ngram, float]], list[dict[Ngram, float]]]:
    """(probabilities, back-off weights) per order (index n-1 for order n), as probabilities.

    Back-off weights are keyed by their context, orders below the highest only. The unigrams
    hold every word seen, </s> and <unk> (which gets only the mass the discount freed).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    counts = adjusted_counts(count_ngrams(sentences, order), order)
    vocabulary = sorted({ngram[0] for ngram in counts[0]} | {UNKNOWN_WORD})
    for word in vocabulary:  # every word, seen or not, is a unigram (<unk> with count 0)
        counts[0].setdefault((word,), 0)
    probs: list[dict[Ngram, float]] = []
    backoffs: list[dict[Ngram, float]] = []
    for n in range(1, order + 1):
        d = discount(+counts[n - 1])  # + drops the zero counts
        totals: defaultdict[Ngram, float] = defaultdict(float)
        types: Counter[Ngram] = Counter()
        for ngram, count in counts[n - 1].items():
            totals[ngram[:-1]] += count
            types[ngram[:-1]] += count > 0
        gamma = {context: d * types[context] / totals[context] for context in totals}
        below = probs[-1] if probs else None  # the next lower order; uniform below unigrams
        probs.append({
            ngram: max(count - d, 0.0) / totals[ngram[:-1]] + gamma[ngram[:-1]] * (
                below[ngram[1:]] if below is not None else 1.0 / len(vocabulary))
            for ngram, count in counts[n - 1].items()
        })
        if n > 1:
            backoffs.append(gamma)
    backoffs.append({})  # the highest order backs off nowhere
    return probs, backoffs


def arpa_text(probs: list[dict[Ngram, float]], backoffs: list[dict[Ngram, float]]) -> str:
    """The ARPA file of a model from `interpolated_kneser_ney`."""
    probs = [dict(p) for p in probs]
    probs[0][(SENTENCE_START,)] = 0.0  # a context only; written as LOG10_ZERO
    lines = ["\\data\\"]
    lines += [f"ngram {n}={len(p)}" for n, p in enumerate(probs, 1)]
    for n, (order_probs, order_backoffs) in enumerate(zip(probs, backoffs), 1):
        lines += ["", f"\\{n}-grams:"]
        for ngram in sorted(order_probs):
            prob = order_probs[ngram]
            fields = [f"{math.log10(prob) if prob > 0 else LOG10_ZERO:.6f}", " ".join(ngram)]
            if ngram in order_backoffs:
                fields.append(f"{math.log10(order_backoffs[ngram]):.6f}")
            lines.append("\t".join(fields))
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def write_arpa(sentences: Iterable[Sequence[str]], path: str | Path, order: int = 3) -> Path:
    """Build an interpolated Kneser-Ney model of `order` from word sequences into `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(arpa_text(*interpolated_kneser_ney(sentences, order)))
    return path


def check_lm_file(path: str | Path) -> Path:
    """`path` if it exists and starts as an ARPA or KenLM binary model does, else
    UserInputError naming it (KenLM, which reads it, reports the rest when it loads)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such language model file")
    with path.open("rb") as file:
        head = file.read(4096)
    if head.startswith(KENLM_BINARY_MAGIC) or head.lstrip().startswith(b"\\data\\"):
        return path
    raise UserInputError(f"{path}: not a language model (an ARPA file starts with \\data\\, "
                         "a KenLM binary with 'mmap lm')")


def build_lexicon_and_lm(
    texts: Sequence[str], tokenizer: Tokenizer, out_dir: str | Path, order: int = 3
) -> tuple[Path, Path]:
    """A recipe's lexicon (every word of `texts`, spelled as `tokenizer` encodes it) and word
    n-gram LM of `order`, as out_dir/LEXICON_FILE and out_dir/LM_FILE."""
    out_dir = Path(out_dir)
    lexicon = write_lexicon(lexicon_from_texts(texts, tokenizer), out_dir / LEXICON_FILE)
    return lexicon, write_arpa([text.split() for text in texts], out_dir / LM_FILE, order)
