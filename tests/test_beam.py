"""Beam search with a lexicon and a word n-gram LM (torchaudio's ctc_decoder), the Kneser-Ney
ARPA builder, and every bad lexicon or LM file: on synthetic CTC output whose best answer is
known, with a tokenizer trained as the digits recipe trains its own."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from conftest import log_probs
from edge_conformer.config.schemas import ConfigError
from edge_conformer.data.corpora.digits import DIGIT_WORDS
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode.beam import decode_settings, decode_text, make_decoder
from edge_conformer.decode.lexicon import lexicon_from_texts, read_lexicon, write_lexicon
from edge_conformer.decode.ngram import (
    LM_FILE,
    build_lexicon_and_lm,
    interpolated_kneser_ney,
    write_arpa,
)
from edge_conformer.errors import UserInputError


@pytest.fixture(scope="session")
def digits_lexicon(digits_tokenizer: Tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lexicon") / "lexicon.txt"
    return write_lexicon(lexicon_from_texts(DIGIT_WORDS, digits_tokenizer), path)


def decoded(tokenizer: Tokenizer, emissions: torch.Tensor, **settings: object) -> str:
    return tokenizer.decode(make_decoder(decode_settings(**settings), tokenizer)(emissions))


def test_greedy_is_the_default_and_the_lexicon_allows_only_its_words(
    digits_tokenizer: Tokenizer, digits_lexicon: Path
) -> None:
    # "▁six" then "x" (0.6 against the blank's 0.4): spelled freely, "sixx".
    emissions = log_probs(digits_tokenizer, [{}, {"▁six": 0.9}, {"x": 0.6}, {}])
    assert decode_settings().beam_size is None
    assert decoded(digits_tokenizer, emissions) == "sixx"
    assert decoded(digits_tokenizer, emissions, beam_size=8) == "sixx"
    assert decoded(digits_tokenizer, emissions, beam_size=8, lexicon=str(digits_lexicon)) == "six"
    # A word's last piece may last two frames (a spike as the digits model emits them), not
    # give way to another word that is only the second most likely there.
    twice = log_probs(digits_tokenizer,
                      [{}, {"▁six": 0.66}, {"▁six": 0.4, "▁three": 0.35}, {}])
    assert decoded(digits_tokenizer, twice, beam_size=8, lexicon=str(digits_lexicon)) == "six"
    # decode_text (for reporting beam WER from logits) takes logits, not log-probs.
    beam = make_decoder(decode_settings(beam_size=8, lexicon=str(digits_lexicon)),
                        digits_tokenizer)
    assert decode_text(beam, emissions * 3 + 7, digits_tokenizer) == "six"


def test_the_lm_overrules_a_close_acoustic_call(
    digits_tokenizer: Tokenizer, digits_lexicon: Path, tmp_path: Path
) -> None:
    # After "nine", "two" is acoustically a little likelier than "one" (0.5 against 0.4) ...
    emissions = log_probs(digits_tokenizer,
                          [{}, {"▁nine": 0.95}, {}, {"▁one": 0.4, "▁two": 0.5}, {}])
    lexicon = str(digits_lexicon)
    assert decoded(digits_tokenizer, emissions, beam_size=8, lexicon=lexicon) == "nine two"
    # ... but the training transcripts never say "nine two".
    lm = write_arpa([["nine", "one"]] * 20 + [["two", "nine"]] * 20, tmp_path / LM_FILE)
    assert decoded(digits_tokenizer, emissions, beam_size=8, lexicon=lexicon, lm=str(lm),
                   lm_weight=1.0) == "nine one"
    assert decoded(digits_tokenizer, emissions, beam_size=8, lexicon=lexicon, lm=str(lm),
                   lm_weight=0.0) == "nine two"


def test_kneser_ney_normalises_and_kenlm_reads_it_as_built(tmp_path: Path) -> None:
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import create_word_dict

    rng = random.Random(1)
    sentences = [rng.choices("a b c d".split(), k=rng.randint(1, 6)) for _ in range(60)]
    probs, backoffs = interpolated_kneser_ney(sentences, 3)
    vocabulary = [word for (word,) in probs[0] if word != "<s>"]

    def p(word: str, history: tuple[str, ...]) -> float:  # ARPA's back-off semantics
        if history + (word,) in probs[len(history)]:
            return probs[len(history)][history + (word,)]
        return backoffs[len(history) - 1].get(history, 1.0) * p(word, history[1:])

    for history in [("<s>",), ("a",), ("<s>", "b"), ("c", "d"), ("d", "d"), ("b", "a")]:
        assert sum(p(word, history) for word in vocabulary) == pytest.approx(1.0, abs=1e-9)

    path = write_arpa(sentences, tmp_path / "lm.arpa", 3)
    words = create_word_dict({word: [[word]] for word in vocabulary})
    lm = KenLM(str(path), words)
    state, score = lm.score(lm.start(False), words.get_index("b"))
    assert score == pytest.approx(math.log10(p("b", ("<s>",))), abs=1e-5)
    state, score = lm.score(state, words.get_index("a"))
    assert score == pytest.approx(math.log10(p("a", ("<s>", "b"))), abs=1e-5)
    assert lm.finish(state)[1] == pytest.approx(math.log10(p("</s>", ("b", "a"))), abs=1e-5)


def test_recipe_lexicon_spells_each_training_word_once(
    digits_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    lexicon, lm = build_lexicon_and_lm(["three one", "oh nine", "one"], digits_tokenizer,
                                       tmp_path)
    assert read_lexicon(lexicon, digits_tokenizer) == {
        "nine": [("▁nine",)], "oh": [("▁", "o", "h")], "one": [("▁one",)],
        "three": [("▁three",)]}
    assert lm.read_text().startswith("\\data\\\nngram 1=7\n")  # 4 words, <s>, </s>, <unk>
    # A word spelled "▁ o h" (its "▁" a piece of its own, not a silence) is found.
    emissions = log_probs(digits_tokenizer, [{"▁": 0.9}, {"o": 0.9}, {"h": 0.9}, {}])
    assert decoded(digits_tokenizer, emissions, beam_size=8, lexicon=str(lexicon)) == "oh"
    with pytest.raises(ValueError, match="'naïve' is spelled with .* does not have"):
        lexicon_from_texts(["naïve"], digits_tokenizer)


BAD_LEXICONS = {
    "unknown piece": ("one\t▁one\nqueue\t▁ q u e u e\n", "lexicon.txt:2: word 'queue' is spelled "
                      "with q, which the tokenizer digits.model does not have"),
    "unknown-piece token": ("zero\t<unk>\n", "does not have"),
    "spelling of another word": ("one\t▁two\n", "word 'one' is spelled ▁two, which the "
                                 "tokenizer reads as 'two'"),
    "no spelling": ("one\n", "lexicon.txt:1: word 'one' has no spelling"),
    "empty": ("\n\n", "lexicon.txt: empty lexicon"),
    "not text": (b"\xff\xfe\x00one", "lexicon.txt: unreadable lexicon"),
}


@pytest.mark.parametrize("case", BAD_LEXICONS)
def test_a_bad_lexicon_is_named(case: str, digits_tokenizer: Tokenizer, tmp_path: Path) -> None:
    content, message = BAD_LEXICONS[case]
    path = tmp_path / "lexicon.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserInputError, match=message):
        make_decoder(decode_settings(beam_size=4, lexicon=str(path)), digits_tokenizer)


BAD_LMS = {
    "missing": (None, "lm.arpa: no such language model file"),
    "not an LM": ("hello world\n", "lm.arpa: not a language model"),
    "truncated ARPA": ("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\n",
                       "lm.arpa: unreadable language model"),
}


@pytest.mark.parametrize("case", BAD_LMS)
def test_a_bad_lm_is_named(
    case: str, digits_tokenizer: Tokenizer, digits_lexicon: Path, tmp_path: Path
) -> None:
    content, message = BAD_LMS[case]
    path = tmp_path / "lm.arpa"
    if content is not None:
        path.write_text(content)
    settings = decode_settings(beam_size=4, lexicon=str(digits_lexicon), lm=str(path))
    with pytest.raises(UserInputError, match=message) as error:
        make_decoder(settings, digits_tokenizer)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize(("settings", "message"), [
    ({"beam_size": 0}, "beam_size=0 must be >= 1"),
    ({"lexicon": "lexicon.txt"}, "beam_size=None (greedy) cannot use a lexicon or LM"),
    ({"beam_size": 4, "lm": "lm.arpa"}, "lm='lm.arpa' needs a lexicon"),
    ({"beam_size": 4, "beam_threshold": 0}, "beam_threshold=0.0 must be > 0"),
])
def test_decode_knobs_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_settings(**settings)
