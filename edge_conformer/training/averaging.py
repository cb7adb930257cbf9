"""The averaged model (icefall's `--use-averaged-model`, SWA): the weights averaged over the
end of training, which is what validation, testing, checkpoints and export then use.

Lightning's WeightAveraging keeps the average; three of its defaults do not fit a run that
starts averaging part-way: before the first update its average is the *initial* weights, and
it would validate, save and finish with those; and when a finished run is tested it would load
the weights being trained over the average from the checkpoint. AverageFromStep uses the
weights being trained until the average has begun, and tests the average.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class AverageFromStep(WeightAveraging):
    """Equal-weight average of the weights after every `every_n_steps`-th optimiser step from
    step `start_step` (zero-based) on, buffers (BatchNorm statistics) included."""

    def __init__(self, start_step: int, every_n_steps: int) -> None:
        super().__init__(use_buffers=True)
        self.start_step = start_step
        self.every_n_steps = every_n_steps

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (step_idx is not None and step_idx >= self.start_step
                and (step_idx - self.start_step) % self.every_n_steps == 0)

    def has_begun(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.has_begun():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.has_begun():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.has_begun():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.has_begun():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
        elif self._average_model is not None:
            # Not begun: the weights being trained are the model, and a resumed run starts
            # its average from nothing, as this one would have.
            checkpoint["current_model_state"] = checkpoint["state_dict"]
            checkpoint["averaging_state"] = {"n_averaged": torch.zeros((), dtype=torch.long)}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Resuming restores both models; testing keeps the average, which `state_dict` holds.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def averaging_callback(share: float | None, every_n_steps: int, horizon: int
                       ) -> AverageFromStep | None:
    """The callback for `averaging.start_share` of conf/train.yaml: averaging from that share
    of the run's `horizon` in steps (None/null, or no horizon: no averaging)."""
    if share is None or horizon <= 0:
        return None
    return AverageFromStep(start_step=int(share * horizon), every_n_steps=every_n_steps)
