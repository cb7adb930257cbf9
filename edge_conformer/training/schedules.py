"""The optimiser and learning-rate schedule an `optim` config names (conf/optim/), and the
schedules: multipliers of the optimiser's peak learning rate, one per step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from edge_conformer.config import ConfigError

# An epoch-based run (trainer.max_steps=-1) knows no step count: the cosine then decays over
# this many steps, so that it barely decays at all.
EPOCH_RUN_HORIZON = 100_000

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def noam(warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then inverse square-root decay (Vaswani et al.; NeMo's Noam)."""
    def factor(step: int) -> float:
        step = max(step, 1)
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))
    return factor


def cosine(warmup_steps: int, total_steps: int, min_factor: float = 0.01) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to `min_factor` at `total_steps` (-1: at
    EPOCH_RUN_HORIZON)."""
    horizon = total_steps if total_steps > 0 else EPOCH_RUN_HORIZON

    def factor(step: int) -> float:
        if step < warmup_steps:
            return max(step, 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, horizon - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def optimizer_factory(optim: Mapping[str, Any]) -> OptimizerFactory:
    """The `_target_` of a resolved `optim` config (a torch.optim class) bound to the arguments
    beside it: call it with the parameters to train."""
    arguments = {key: value for key, value in optim.items() if key != "schedule"}
    return instantiate(arguments, _partial_=True, _convert_="all")


def lr_schedule(optim: Mapping[str, Any]) -> Callable[[int], float]:
    """The step -> learning-rate multiplier that `optim.schedule`'s `_target_` returns."""
    return instantiate(optim["schedule"])


def check_optim(optim: Mapping[str, Any]) -> None:
    """Build the optimiser (on a stand-in parameter) and the schedule `optim` names, so that a
    wrong `_target_` or argument fails in one line before the corpus is prepared."""
    stand_in = [torch.nn.Parameter(torch.zeros(1))]
    _check("optim._target_", optim["_target_"], lambda: optimizer_factory(optim)(stand_in))
    _check("optim.schedule._target_", optim["schedule"]["_target_"],
           lambda: lr_schedule(optim)(0))


def _check(key: str, target: str, build: Callable[[], object]) -> None:
    try:
        build()
    except (InstantiationException, TypeError, ValueError) as error:
        # Hydra wraps what the target raised, or the ImportError of a target that is not there.
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if isinstance(cause, ImportError):
            raise ConfigError(f"{key}={target!r} cannot be imported") from error
        reason = str(cause or error).strip().splitlines()[0]
        raise ConfigError(f"{key}={target!r} fails: {reason}") from error
