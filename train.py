"""Train, evaluate and report a Conformer-CTC model. All knobs live in conf/.

    python train.py                                   # digits recipe, xs model
    python train.py model=s data=librispeech trainer=gpu
    python train.py -m model.subsampling=regular,depthwise model.norm=l2,mad
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from edge_conformer.training.run import train
from edge_conformer.training.rundir import register_resolvers

register_resolvers()  # conf/train.yaml names run directories with it


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
