"""Learning-rate schedules as multipliers of the optimiser's peak learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable


def noam(warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then inverse square-root decay (Vaswani et al.; NeMo's Noam)."""
    def factor(step: int) -> float:
        step = max(step, 1)
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))
    return factor


def cosine(warmup_steps: int, total_steps: int, min_factor: float = 0.01) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to `min_factor` at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return max(step, 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_schedule(name: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    if name == "noam":
        return noam(warmup_steps)
    if name == "cosine":
        return cosine(warmup_steps, total_steps)
    raise ValueError(f"optim.schedule must be 'noam' or 'cosine', got {name!r}")
