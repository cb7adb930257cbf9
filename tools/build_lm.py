"""Build a recipe's beam-search lexicon and word n-gram LM from its training transcripts.

    python tools/build_lm.py --model outputs/digits-xs-depthwise-l2 \\
        --transcripts data/digits/cuts_train.jsonl.gz            # -> data/digits/lm/
    python tools/transcribe.py --model exports/digits-xs --beam 16 \\
        --lexicon data/digits/lm/lexicon.txt --lm data/digits/lm/lm.arpa a.wav

--transcripts: a lhotse cut manifest (the recipe's cuts_<split>.jsonl.gz; its supervisions'
texts) or a text file with one transcript per line. The lexicon holds every word, spelled in
the pieces of --model's tokenizer (a checkpoint, run directory or export directory: the model
the lexicon is for); the LM is interpolated Kneser-Ney of --order (edge_conformer/decode/
ngram.py). They go to --out-dir (default: lm/ beside the transcripts) as lexicon.txt and
lm.arpa. A model trained on another corpus can use an LM built elsewhere (e.g. KenLM's lmplz,
ARPA or binary) with a lexicon built here from that LM's word list.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edge_conformer.data.manifests import cut_text, load_cuts
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode.ngram import build_lexicon_and_lm
from edge_conformer.errors import UserInputError, exit_on_user_input_error
from edge_conformer.runtime.checkpoint import TOKENIZER_FILE, load_checkpoint
from edge_conformer.runtime.transcriber import is_export_dir

MANIFEST_SUFFIXES = (".jsonl.gz", ".jsonl")


def read_transcripts(path: Path) -> list[str]:
    """The transcripts of a cut manifest or a text file (one per line, blank lines skipped)."""
    if not path.is_file():
        raise UserInputError(f"{path}: no such transcripts file")
    try:
        if path.name.endswith(MANIFEST_SUFFIXES):
            texts = [cut_text(cut) for cut in load_cuts(path)]
        else:
            texts = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as error:
        raise UserInputError(f"{path}: unreadable transcripts ({type(error).__name__})") from error
    texts = [text.strip() for text in texts if text.strip()]
    if not texts:
        raise UserInputError(f"{path}: no transcripts")
    return texts


def model_tokenizer(model: str, tokenizer_dir: Path) -> Tokenizer:
    if is_export_dir(model):
        return Tokenizer(Path(model) / TOKENIZER_FILE)
    return load_checkpoint(model, tokenizer_dir).tokenizer


@exit_on_user_input_error
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True,
                        help="a .ckpt, a training run directory, or an export directory")
    parser.add_argument("--transcripts", required=True, type=Path,
                        help="cut manifest (.jsonl.gz) or text file, one transcript per line")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--out-dir", type=Path, help="default: lm/ beside --transcripts")
    args = parser.parse_args()
    if args.order < 1:
        parser.error(f"--order must be >= 1, got {args.order}")
    texts = read_transcripts(args.transcripts)
    out_dir = args.out_dir or args.transcripts.parent / "lm"
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        tokenizer = model_tokenizer(args.model, Path(tokenizer_dir))
        try:
            lexicon, lm = build_lexicon_and_lm(texts, tokenizer, out_dir, args.order)
        except ValueError as error:  # a word the tokenizer cannot spell
            raise UserInputError(f"{args.transcripts}: {error}") from error
    print(f"{lexicon}\n{lm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
