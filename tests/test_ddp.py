"""Scale-out: DDP through train.py with two CPU processes, and the trainer presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import FSDD_DIR, REPO, small_digits_overrides
from edge_conformer.data.manifests import load_cuts

# train.py with every training batch's cut ids appended to <EC_PROBE_DIR>/rank<N>.txt. It runs
# train.py as the main script while sys.argv[0] stays the probe: Lightning's DDP launcher
# restarts sys.argv[0] for the other ranks, so every rank records what it trained on.
PROBE = '''
import os
import sys

sys.path.insert(0, os.environ["EC_REPO"])
import edge_conformer.training.lit_module as lit_module

_training_step = lit_module.CTCModule.training_step


def training_step(self, batch, batch_idx):
    path = os.path.join(os.environ["EC_PROBE_DIR"], f"rank{self.global_rank}.txt")
    with open(path, "a") as f:
        f.write(" ".join(batch["ids"]) + "\\n")
    return _training_step(self, batch, batch_idx)


lit_module.CTCModule.training_step = training_step
if __name__ == "__main__":
    path = os.path.join(os.environ["EC_REPO"], "train.py")
    with open(path) as source:
        exec(compile(source.read(), path, "exec"), {"__name__": "__main__", "__file__": path})
'''


def _batches(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_ddp_two_cpu_ranks_train_on_different_batches_for_equal_steps(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    run_dir = tmp_path / "run"
    args = [
        *small_digits_overrides(tmp_path / "data"), "data.max_duration=8",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
        # One whole epoch: the ranks must reach its end after the same number of steps,
        # or DDP would hang waiting for the rank that has one batch more.
        "trainer.max_steps=-1", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "EC_REPO": str(REPO), "EC_PROBE_DIR": str(tmp_path),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, str(probe), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    rank0, rank1 = _batches(tmp_path / "rank0.txt"), _batches(tmp_path / "rank1.txt")
    results = json.loads((run_dir / "results.json").read_text())
    assert len(rank0) == len(rank1) == results["train_steps"] >= 3
    for step, (a, b) in enumerate(zip(rank0, rank1)):
        assert not set(a) & set(b), f"step {step}: both ranks got {set(a) & set(b)}"
    seen0, seen1 = {c for b in rank0 for c in b}, {c for b in rank1 for c in b}
    assert not seen0 & seen1, "one epoch must not give a cut to both ranks"
    assert len(seen0 | seen1) > 0.75 * 48, "drop_last may only drop the final partial round"
    # Throughput counts the audio of both ranks (results.json reports the job, not rank 0).
    durations = {c.id: c.duration for c in load_cuts(tmp_path / "data" / "cuts_train.jsonl.gz")}
    trained = sum(durations[cut] for batch in rank0 + rank1 for cut in batch)
    assert results["train_audio_seconds"] == pytest.approx(trained, rel=0.02)
    # Evaluation gathers both ranks' shares: every test utterance counted exactly once.
    assert {r["utterances"] for r in results["test"].values()} == {8}
    # One W&B run for the job (rank zero logs), resumable by the id in the run dir.
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert offline_run.name.endswith((run_dir / "wandb_run_id.txt").read_text().strip())


def _trainer_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"data.fsdd_dir={FSDD_DIR}", *overrides]).trainer


def test_ddp_preset_is_lightning_ddp_over_gpus_and_nodes():
    cfg = _trainer_config("trainer=ddp", "trainer.devices=8", "trainer.num_nodes=4")
    assert (cfg.strategy, cfg.accelerator, cfg.precision) == ("ddp", "gpu", "bf16-mixed")
    assert (cfg.devices, cfg.num_nodes, cfg.use_distributed_sampler) == (8, 4, False)


def test_fsdp_preset_wraps_each_conformer_block():
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from edge_conformer.model import ConformerBlock

    trainer = instantiate(_trainer_config("trainer=fsdp"), _convert_="all")
    strategy = trainer["strategy"]
    assert isinstance(strategy, FSDPStrategy) and trainer["precision"] == "bf16-mixed"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert policy._module_classes == {ConformerBlock}


def test_slurm_launcher_preset_allocates_one_task_per_trainer_device():
    # The launcher plugin is the optional [cluster] extra; [dev] installs it for this test.
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm_gpu", "data=librispeech", "trainer=ddp",
            "trainer.devices=8", "trainer.num_nodes=2",
        ])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)
