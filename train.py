"""Train, evaluate and report a Conformer-CTC model. All knobs live in conf/.

    python train.py                                   # digits recipe, xs model
    python train.py model=s data=librispeech trainer=gpu
    python train.py -m model.subsampling=regular,depthwise model.norm=l2,mad

The config is checked before torch or Lightning is imported (edge_conformer/config/entry.py):
a bad knob, or settings the data cannot meet, end in one line naming them and exit status 1.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from edge_conformer.config.entry import check_command_line, user_input_errors_first
from edge_conformer.errors import exit_on_user_input_error
from edge_conformer.training.rundir import register_resolvers

CONF_DIR = Path(__file__).parent / "conf"
register_resolvers()  # conf/train.yaml names run directories with it


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@exit_on_user_input_error
def main(cfg: DictConfig) -> None:
    from edge_conformer.training.run import train  # torch and Lightning: only for real runs

    with user_input_errors_first():
        train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    check_command_line(CONF_DIR, "train")
    main()
