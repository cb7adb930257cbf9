"""The random number generators a training run draws from, as checkpoints carry them.

A resumed run must draw what the uninterrupted run drew (dropout masks, augmentation, sampler
shuffles): torch on the CPU and on the current CUDA device, numpy and Python's `random`. The
states hold only tensors, lists and numbers, so Lightning's `weights_only` loading accepts them.
Under DDP rank 0's states are saved and every rank restores them, as for the model itself.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """The current state of every generator, for a checkpoint."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), position, has_gauss, cached_gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # saving never starts CUDA
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what `rng_states` saved; a generator the states lack keeps its own state."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        name, keys, position, has_gauss, cached_gauss = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss,
                             cached_gauss))
    if "python" in states:
        random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
