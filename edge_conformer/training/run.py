"""Build everything a training run needs from the Hydra config, fit, test, report."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from edge_conformer.data.datamodule import SpeechDataModule
from edge_conformer.model import build_model, count_parameters
from edge_conformer.records import RESULTS_JSON, RunResults, Variant
from edge_conformer.training.averaging import averaging_callback
from edge_conformer.training.chunking import DynamicChunks
from edge_conformer.training.lit_module import CTCModule
from edge_conformer.training.results import print_results
from edge_conformer.training.schedules import check_optim
from edge_conformer.training.threads import configure_cpu_threads

log = logging.getLogger(__name__)


def _checkpoint_callbacks(run_dir: Path, every_n_steps: int) -> tuple[ModelCheckpoint, ...]:
    """`last.ckpt` every `every_n_steps` (for resuming), and the best validated checkpoint.

    Two callbacks, because one that saves every n steps and also monitors val/wer ranks each
    periodic save by the last validation's WER (a stale score), and skips the save after a
    validation that falls on a step it has already saved: the final validation then never
    competes for "best".
    """
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", save_top_k=0, save_last=True,
        every_n_train_steps=every_n_steps, enable_version_counter=False,
    )
    # save_last here too: last.ckpt is rewritten after each validation, so a run stopped right
    # after one resumes knowing its best score (else the new best would leave an orphan file).
    # No version counter: both callbacks overwrite the one last.ckpt.
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-{step}", monitor="val/wer", mode="min",
        save_top_k=1, save_last=True, enable_version_counter=False,
    )
    return last, best


def _test_checkpoint(which: str, last: ModelCheckpoint, best: ModelCheckpoint) -> str:
    """The checkpoint `test_checkpoint` names: the last, or the best validated one (the last
    if validation never ran)."""
    if which == "best" and best.best_model_path:
        return best.best_model_path
    return last.last_model_path


def build_datamodule(cfg: DictConfig) -> SpeechDataModule:
    """The config's DataModule with its corpus prepared and tokenizer trained."""
    datamodule: SpeechDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    return datamodule


def build_module(cfg: DictConfig, datamodule: SpeechDataModule) -> CTCModule:
    """The LightningModule for `cfg.model`, sized to the datamodule's vocabulary and features."""
    model = build_model(cfg.model, datamodule.tokenizer.vocab_size, datamodule.features.n_mels)
    return CTCModule(
        model,
        datamodule.tokenizer,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        test_names=list(datamodule.test_splits),
        checkpoint_extras={"config": OmegaConf.to_container(cfg, resolve=True)},
        streaming=DynamicChunks.from_config(cfg.model.get("streaming")),
        seed=cfg.seed,
    )


def training_horizon(cfg: DictConfig) -> int:
    """The steps the run is planned for: its LR schedule's, which a run stopped early and then
    extended pins (optim.schedule.total_steps), else trainer.max_steps (<= 0: no plan)."""
    total = cfg.optim.get("schedule", {}).get("total_steps", -1)
    return total if total > 0 else cfg.trainer.max_steps


def train(cfg: DictConfig, run_dir: Path) -> RunResults:
    """Fit, test and report one run; returns what its results.json holds."""
    check_optim(OmegaConf.to_container(cfg.optim, resolve=True))  # before minutes of data work
    configure_cpu_threads(cfg.trainer.accelerator, cfg.data.num_workers)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    model = module.model
    logger = False
    if cfg.logger:
        logger = instantiate(cfg.logger, run_dir=str(run_dir), name=cfg.run_name)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    checkpoints = _checkpoint_callbacks(run_dir, cfg.checkpoint_every_n_steps)
    averaging = averaging_callback(cfg.averaging.start_share, cfg.averaging.every_n_steps,
                                   training_horizon(cfg))
    trainer = L.Trainer(
        # instantiate: a strategy may be an object (conf/trainer/fsdp.yaml), the rest passes as is
        **instantiate(cfg.trainer, _convert_="all"),
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=[*checkpoints, *([averaging] if averaging else [])],
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    resume_from = str(last) if cfg.resume and last.is_file() else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    # The run's totals, read before testing: loading the tested checkpoint restores the
    # counters it was saved with (the best's step may precede the last; last.ckpt was written
    # before the final validation).
    train_seconds, audio_seconds = module.train_seconds, module.audio_seconds
    skipped_utterances = module.skipped_utterances
    tested = _test_checkpoint(cfg.test_checkpoint, *checkpoints)
    trainer.test(module, datamodule=datamodule, ckpt_path=tested)

    results = RunResults(
        run_name=cfg.run_name,
        run_dir=str(run_dir),
        variant=Variant(size=cfg.model.name, subsampling=cfg.model.subsampling,
                        norm=cfg.model.norm),
        parameters=count_parameters(model),
        vocab_size=datamodule.tokenizer.vocab_size,
        train_steps=trainer.global_step,
        train_wall_seconds=round(train_seconds, 2),
        train_audio_seconds=round(audio_seconds, 2),
        audio_seconds_per_second=round(audio_seconds / max(train_seconds, 1e-9), 2),
        skipped_utterances=skipped_utterances,
        checkpoint=tested,
        test=dict(module.test_results),
        wandb_run_id=logger.version if isinstance(logger, WandbLogger) else None,
    )
    if trainer.is_global_zero:
        results.write(run_dir / RESULTS_JSON)
        print_results(results)
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(_summary(results))
    _finish_wandb()
    return results


def _summary(results: RunResults) -> dict:
    summary = {f"variant/{k}": v for k, v in results.variant.to_json().items()}
    summary.update(parameters=results.parameters, train_wall_seconds=results.train_wall_seconds,
                   audio_seconds_per_second=results.audio_seconds_per_second)
    for name, rates in results.test.items():
        summary[f"test/{name}/wer"] = rates.wer
        if rates.wer_stream is not None:
            summary[f"test/{name}/wer_stream"] = rates.wer_stream
    return summary


def _finish_wandb() -> None:
    """Close the W&B run: in a Hydra multirun the next job would otherwise log into it."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
