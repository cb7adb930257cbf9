"""Where a training step of the default recipe spends its time, on this machine.

Three views of the same run (`python train.py`'s config, any overrides appended):
1. Lightning's SimpleProfiler over `--steps` training steps and one validation: waiting for the
   loader, training_step (forward + loss + logging), backward, optimiser step, validation.
2. The loader's own work per batch, measured in this process on the same batches: reading
   audio, log-mel features, SpecAugment, collation. In training it runs in a worker process
   that competes with the model for the cores.
3. torch.profiler's operator table of one forward + backward on a training batch.

    python benchmarks/profile_train_step.py --steps 40
    python benchmarks/profile_train_step.py --steps 40 --threads 2   # vs the automatic choice
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.profilers import SimpleProfiler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_conformer.data.dataset import collate, load_cut_audio  # noqa: E402
from edge_conformer.training.run import build_datamodule, build_module  # noqa: E402
from edge_conformer.training.threads import configure_cpu_threads  # noqa: E402

# SimpleProfiler's action names, in the order a step runs them, and what to call them.
STEP_ACTIONS = {
    "[_TrainingEpochLoop].train_dataloader_next": "wait for the loader",
    "[Strategy]SingleDeviceStrategy.training_step": "forward + loss + logging",
    "[Strategy]SingleDeviceStrategy.backward": "backward",
    "[LightningModule]CTCModule.optimizer_step": "optimiser step (incl. forward/backward)",
    "run_training_batch": "whole step",
    "[_EvaluationLoop].val_next": "validation: wait for the loader",
    "[Strategy]SingleDeviceStrategy.validation_step": "validation: forward + decode",
}


def load_config(overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["~logger", *overrides])


def profile_trainer(cfg, steps: int, run_dir: Path) -> dict[str, tuple[float, int]]:
    """(mean seconds, calls) per SimpleProfiler action over `steps` steps and one validation."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    profiler = SimpleProfiler(dirpath=str(run_dir), filename="simple")
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, val_check_interval=steps,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps, gradient_clip_val=5.0,
        default_root_dir=str(run_dir), profiler=profiler,
    )
    trainer.fit(module, datamodule=datamodule)
    return {
        action: (statistics.fmean(durations), len(durations))
        for action, durations in profiler.recorded_durations.items()
    }


def loader_work(cfg, batches: int) -> dict[str, float]:
    """Mean seconds per training batch of each piece of the loader's work, in this process."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    dataset = datamodule._dataset(train=True)
    sampler = datamodule._sampler(datamodule.train_split, train=True)
    totals = {"read audio": 0.0, "log-mel features": 0.0, "SpecAugment": 0.0, "collate": 0.0}
    for n, cuts in enumerate(sampler):
        if n == batches:
            break
        generator = dataset._generator(cuts)
        feats = []
        for cut in cuts:
            start = time.perf_counter()
            audio = load_cut_audio(cut, dataset.features.sample_rate)
            read = time.perf_counter()
            cut_feats = dataset.features(audio, generator)
            featurised = time.perf_counter()
            cut_feats = dataset.spec_augment(cut_feats, generator)
            augmented = time.perf_counter()
            totals["read audio"] += read - start
            totals["log-mel features"] += featurised - read
            totals["SpecAugment"] += augmented - featurised
            feats.append(cut_feats)
        start = time.perf_counter()
        collate(feats, [torch.ones(3, dtype=torch.long)] * len(feats), [""] * len(feats),
                [c.id for c in cuts], 0)
        totals["collate"] += time.perf_counter() - start
    return {name: total / batches for name, total in totals.items()}


def operator_table(cfg, rows: int) -> str:
    """torch.profiler's top operators (self CPU time) of one forward + backward."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    module.model.train()
    for _ in range(2):  # warm-up, then the profiled step
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            logits, lengths = module.model(batch["features"], batch["feature_lengths"])
            module._ctc_loss(logits, lengths, batch).backward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: chosen as train.py chooses them)")
    parser.add_argument("--ops", type=int, default=15, help="rows of the operator table")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=s")
    args = parser.parse_args()
    cfg = load_config(args.overrides)
    threads = configure_cpu_threads(cfg.trainer.accelerator, cfg.data.num_workers, args.threads)
    print(f"# {args.steps} steps, {threads} intra-op thread(s), "
          f"{cfg.data.num_workers} loader worker(s), {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        actions = profile_trainer(cfg, args.steps, Path(tmp))
    print("\n| part of a step | mean ms | calls |\n|---|---:|---:|")
    for action, label in STEP_ACTIONS.items():
        if action in actions:
            mean, calls = actions[action]
            print(f"| {label} | {1000 * mean:.1f} | {calls} |")
    print("\n| loader work per batch (one process) | mean ms |\n|---|---:|")
    for name, seconds in loader_work(cfg, min(args.steps, 20)).items():
        print(f"| {name} | {1000 * seconds:.1f} |")
    print("\nOperators of one forward + backward (self CPU time):\n")
    print(operator_table(cfg, args.ops))


if __name__ == "__main__":
    main()
