"""What crosses module boundaries: the files of a run directory and their typed records."""

from __future__ import annotations

RUN_ID_FILE = "wandb_run_id.txt"  # a run's W&B id, written by training, read by export
