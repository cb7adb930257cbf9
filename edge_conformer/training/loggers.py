"""Weights & Biases logging that never blocks: offline unless the user opts in."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from edge_conformer.records import RUN_ID_FILE
from edge_conformer.wandb_mode import wandb_online

log = logging.getLogger(__name__)



def persistent_run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory, so resumes and export continue the same run."""
    id_file = run_dir / RUN_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip()
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_ID_FILE}.{os.getpid()}"
    tmp.write_text(secrets.token_hex(4))  # W&B ids: short, lowercase alphanumeric
    try:
        os.link(tmp, id_file)  # atomic: the ranks of a SLURM job start at once, the first wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return id_file.read_text().strip()


def wandb_logger(
    run_dir: str,
    name: str,
    project: str = "edge-conformer",
    online: bool = False,
    group: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
) -> WandbLogger:
    """A WandbLogger writing under `run_dir`; online only as `wandb_online` decides."""
    run_dir = Path(run_dir)
    mode = "online" if wandb_online(online) else "offline"
    if online and mode == "offline":
        log.warning("logger.online=true but W&B cannot go online (no API key, or WANDB_MODE "
                    "says offline): logging offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        name=name,
        project=project,
        entity=entity,
        group=group,
        tags=list(tags or []),
        save_dir=str(run_dir),
        id=persistent_run_id(run_dir),
        offline=mode == "offline",
        mode=mode,
        resume="allow",
    )


def csv_logger(run_dir: str, name: str) -> CSVLogger:
    return CSVLogger(save_dir=run_dir, name=name)
