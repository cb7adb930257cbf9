"""Intra-op threads for CPU training, chosen from the cores this process may use.

PyTorch starts one OpenMP thread per core. The data loader's worker processes compute
features on the same cores, and OpenMP threads that lose their core to a worker spin and
wait for each other: on 2 cores with 1 worker, 2 intra-op threads trained 7x slower than 1
(benchmarks/RESULTS.md, "Where a training step spends its time"). So the model gets the
cores the workers leave, at least one.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or container limit)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def trains_on_cpu(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` setting runs the model on the CPU here."""
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def configure_cpu_threads(accelerator: str, num_workers: int, threads: int | None = None) -> int:
    """Set and return the intra-op threads of a run on `accelerator` with `num_workers` loaders.

    `threads` (or the OMP_NUM_THREADS a user exported) wins; otherwise CPU training gets the
    cores the loader workers leave. GPU runs keep PyTorch's default: their CPU threads only
    feed the device.
    """
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    if threads is None:
        if not trains_on_cpu(accelerator):
            return torch.get_num_threads()
        threads = max(1, usable_cores() - num_workers)
    if threads != torch.get_num_threads():
        log.info("intra-op threads: %d (cores %d, loader workers %d)",
                 threads, usable_cores(), num_workers)
        torch.set_num_threads(threads)
    return threads
