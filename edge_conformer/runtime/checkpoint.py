"""A training checkpoint as export and transcription need it: model, tokenizer, features, config.

Checkpoints written by `edge_conformer.training` carry everything: the Lightning state dict
(keys prefixed "model."), and under "edge_conformer" the resolved Hydra config, the
SentencePiece model bytes and, for `data.features.normalize=global`, the feature statistics.
Users may also point at a run directory, whose results.json names the checkpoint that was
tested (conf/train.yaml test_checkpoint: the last, or the best validated one).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.errors import UserInputError, one_line, read_json
from edge_conformer.model import ConformerCTC, build_model
from edge_conformer.records import RESULTS_JSON, read_run_id

STATE_PREFIX = "model."  # the LightningModule holds the ConformerCTC as `self.model`
TOKENIZER_FILE = "tokenizer.model"
# What torch.load raises for a file that is not a checkpoint: a text file (UnpicklingError),
# an empty one (EOFError), a truncated or foreign zip (RuntimeError), a directory (OSError),
# a pickle of classes that do not exist here (ImportError, AttributeError).
UNREADABLE_CHECKPOINT_ERRORS = (
    pickle.UnpicklingError, EOFError, RuntimeError, OSError, ImportError, AttributeError,
)


@dataclass
class LoadedCheckpoint:
    path: Path  # the .ckpt file
    run_dir: Path  # the training run directory the checkpoint belongs to
    config: dict  # the full resolved training config (config["model"], config["data"], ...)
    model: ConformerCTC  # FP32, eval mode
    tokenizer: Tokenizer
    features: LogMelFeatures

    @property
    def wandb_run_id(self) -> str | None:
        """The run's W&B id, if it was logged to W&B (see training/loggers.py)."""
        return read_run_id(self.run_dir)


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or the checkpoint a run directory's results.json names."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserInputError(f"{path}: no such checkpoint or run directory")
    results_file = path / RESULTS_JSON
    if not results_file.is_file():
        raise UserInputError(
            f"{path} is a directory without results.json: pass a .ckpt file or a finished run"
        )
    results = read_json(results_file, "run results")
    if not isinstance(results, dict) or not isinstance(results.get("checkpoint"), str):
        raise UserInputError(f"{results_file}: names no checkpoint (no \"checkpoint\" entry)")
    recorded = Path(results["checkpoint"])
    # A run directory that was moved or copied still holds the file under checkpoints/.
    for candidate in (recorded, path / "checkpoints" / recorded.name):
        if candidate.is_file():
            return candidate
    raise UserInputError(f"{results_file} names {recorded}, which does not exist")


def read_checkpoint(path: Path) -> dict:
    """The content of a checkpoint file, or UserInputError naming it if it is not one."""
    try:
        # weights_only=False: training checkpoints hold the config and tokenizer (plain
        # Python objects) beside the weights. Load only checkpoints you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except UNREADABLE_CHECKPOINT_ERRORS as error:
        raise UserInputError(f"{path}: not a PyTorch checkpoint ({one_line(error)})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserInputError(f"{path}: not a training checkpoint (no state_dict)")
    return checkpoint


def checkpoint_run_dir(checkpoint_path: Path) -> Path:
    """The run directory of a checkpoint: checkpoints live in <run dir>/checkpoints/."""
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_checkpoint(path: str | Path, tokenizer_dir: Path) -> LoadedCheckpoint:
    """Load a checkpoint (or a run directory's) into an FP32 eval-mode model and its front end.

    The tokenizer travels inside the checkpoint; it is written to `tokenizer_dir`/tokenizer.model
    (SentencePiece loads from files), where an export wants it anyway.
    """
    ckpt_path = resolve_checkpoint(path)
    checkpoint = read_checkpoint(ckpt_path)
    extras = checkpoint.get("edge_conformer")
    if not extras or "config" not in extras or "tokenizer_model" not in extras:
        raise UserInputError(f"{ckpt_path}: not an edge-conformer training checkpoint")
    config = extras["config"]
    tokenizer_file = Path(tokenizer_dir) / TOKENIZER_FILE
    tokenizer_file.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_file.write_bytes(extras["tokenizer_model"])
    tokenizer = Tokenizer(tokenizer_file)
    # Global feature normalisation's statistics travel beside the config (lit_module.py).
    features = LogMelFeatures.from_saved(config["data"]["features"], extras.get("feature_stats"))

    model = build_model(config["model"], tokenizer.vocab_size, features.n_mels)
    state = {
        key.removeprefix(STATE_PREFIX): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(STATE_PREFIX)
    }
    model.load_state_dict(state)
    return LoadedCheckpoint(
        path=ckpt_path,
        run_dir=checkpoint_run_dir(ckpt_path),
        config=config,
        model=model.eval(),
        tokenizer=tokenizer,
        features=features,
    )
