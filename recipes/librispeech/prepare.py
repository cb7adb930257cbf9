"""Prepare LibriSpeech for training: manifests, tokenizer, optional stored features/Shar.

    python recipes/librispeech/prepare.py [OVERRIDES...]
    python recipes/librispeech/prepare.py data.corpus_dir=/data/LibriSpeech
    python recipes/librispeech/prepare.py data.download=true          # fetch missing splits
    python recipes/librispeech/prepare.py data.shar_dir=/fast/ls_shar # + Shar shards

Takes the same Hydra overrides as train.py (data=librispeech is preset) and runs the
datamodule's own preparation, so what it writes is exactly what train.py then reuses. Run it
once before a multi-GPU or multi-node job: every rank of that job then finds the data ready.
"""

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from edge_conformer.data.manifests import load_cuts

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def main(overrides: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["data=librispeech", *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    for name, path in datamodule.manifests.items():
        cuts = load_cuts(path)
        hours = sum(c.duration for c in cuts) / 3600
        print(f"{name:>16}: {len(cuts):7d} utterances {hours:8.2f} h  {path}")
    print(f"{'tokenizer':>16}: {datamodule.tokenizer.vocab_size} pieces  "
          f"{datamodule.tokenizer_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
