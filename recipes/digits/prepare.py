"""Prepare the digits corpus by hand (train.py also does this on first use).

    python recipes/digits/prepare.py [--fsdd-dir DIR] [--out-dir data/digits]

FSDD_DIR (or --fsdd-dir) points at a local FSDD copy; without one the dataset is downloaded.
"""

import argparse
import logging
import os

from edge_conformer.data.corpora.digits import prepare_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd-dir", default=os.environ.get("FSDD_DIR", "../shared/data/fsdd"))
    parser.add_argument("--out-dir", default="data/digits")
    parser.add_argument("--unseen-speaker", default="theo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for split, path in prepare_digits(args.fsdd_dir, args.out_dir, args.unseen_speaker).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
