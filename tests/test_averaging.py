"""The averaged model (training/averaging.py) on a toy LightningModule: what it averages, and
which weights validation, checkpoints, testing and a resumed run see."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from edge_conformer.training.averaging import AverageFromStep, averaging_callback


class Toy(L.LightningModule):
    """A linear layer trained by SGD; records its weight after each step and what each
    validation and test saw."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.after_step: list[torch.Tensor] = []
        self.validated: list[torch.Tensor] = []
        self.tested: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.after_step.append(self.layer.weight.detach().clone())

    def validation_step(self, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.validated.append(self.layer.weight.detach().clone())

    def test_step(self, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.tested.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> torch.utils.data.DataLoader:
    """One batch per epoch: a run resumed between steps then sees the very same batches."""
    data = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=8)


def fit(tmp_path, module: Toy, steps: int, averaging: AverageFromStep, ckpt_path=None,
        val_every: int = 2) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps, val_check_interval=val_every, check_val_every_n_epoch=None,
        limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[averaging, L.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def test_averages_the_snapshots_from_its_start_step_and_tests_the_average(tmp_path):
    torch.manual_seed(0)
    module = Toy()
    trainer = fit(tmp_path, module, steps=8,
                  averaging=AverageFromStep(start_step=3, every_n_steps=2))
    # zero-based steps 3, 5, 7: the weights after the 4th, 6th and 8th optimiser steps
    average = torch.stack([module.after_step[i] for i in (3, 5, 7)]).mean(0)
    # Validation after 2 steps, before averaging began: the weights being trained, not the
    # initial ones (Lightning's own callback would show those).
    assert torch.equal(module.validated[0], module.after_step[1])
    torch.testing.assert_close(module.validated[-1], average)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    torch.testing.assert_close(saved["state_dict"]["layer.weight"], average)
    torch.testing.assert_close(saved["current_model_state"]["layer.weight"], module.after_step[7])
    trainer.test(module, loader(), ckpt_path=str(tmp_path / "last.ckpt"), verbose=False)
    torch.testing.assert_close(module.tested[-1], average)


def test_resumed_run_averages_as_an_uninterrupted_one(tmp_path):
    torch.manual_seed(0)
    whole = Toy()
    fit(tmp_path / "whole", whole, steps=8, averaging=AverageFromStep(3, 2))
    torch.manual_seed(0)
    first = Toy()
    fit(tmp_path / "split", first, steps=5, averaging=AverageFromStep(3, 2))
    resumed = Toy()
    fit(tmp_path / "split", resumed, steps=8, averaging=AverageFromStep(3, 2),
        ckpt_path=str(tmp_path / "split" / "last.ckpt"))
    for name in ("state_dict", "current_model_state"):
        expected = torch.load(tmp_path / "whole" / "last.ckpt", weights_only=False)[name]
        got = torch.load(tmp_path / "split" / "last.ckpt", weights_only=False)[name]
        torch.testing.assert_close(got["layer.weight"], expected["layer.weight"])


@pytest.mark.parametrize(("share", "max_steps", "start"), [(0.6, 1200, 720), (0.0, 10, 0)])
def test_start_step_from_share(share, max_steps, start):
    assert averaging_callback(share, 10, max_steps).start_step == start


def test_no_averaging():
    assert averaging_callback(None, 10, 1200) is None
