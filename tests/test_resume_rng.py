"""Resume draws what the uninterrupted run would have drawn: every RNG travels in checkpoints."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from edge_conformer.model import ConformerCTC
from edge_conformer.training.lit_module import CTCModule


@pytest.fixture
def module(tmp_path: Path) -> CTCModule:
    tokenizer_file = tmp_path / "tokenizer.model"
    tokenizer_file.write_bytes(b"sentencepiece bytes")
    model = ConformerCTC(8, feat_dim=10, d_model=16, num_heads=2, num_layers=1,
                         conv_kernel_size=3)
    tokenizer = SimpleNamespace(model_path=tokenizer_file)  # all the checkpoint hooks use
    module = CTCModule(model, tokenizer, optim={}, test_names=[])
    # Attached, as during fit (the hooks may ask the trainer), but nothing trained.
    module.trainer = L.Trainer(logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False)
    return module


def draws() -> tuple:
    """A few numbers from every generator a training step may use (CUDA where there is one)."""
    cuda = torch.rand(3, device="cuda").tolist() if torch.cuda.is_available() else None
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(), cuda


def save_and_reload(module: CTCModule, path: Path) -> dict:
    """A checkpoint as Lightning writes it and reads it back on resume (`weights_only`)."""
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_restores_torch_numpy_python_and_cuda_generators(module, tmp_path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(4)
        torch.rand(1, device="cuda")  # CUDA started: its generator is saved too
    checkpoint = save_and_reload(module, tmp_path / "last.ckpt")
    expected = draws()
    draws()  # the run goes on, then dies
    module.on_load_checkpoint(checkpoint)
    assert draws() == expected


def test_checkpoints_from_before_restore_torch_and_leave_the_rest(module, tmp_path) -> None:
    """Older checkpoints carry only torch's CPU state, under "rng_state": still loadable."""
    torch.manual_seed(1)
    legacy = {"rng_state": torch.get_rng_state()}
    expected_torch = torch.rand(3).tolist()
    np.random.seed(2)
    expected_numpy = np.random.rand(3).tolist()
    np.random.seed(2)
    module.on_load_checkpoint(legacy)
    assert torch.rand(3).tolist() == expected_torch
    assert np.random.rand(3).tolist() == expected_numpy  # untouched by the load
