"""End-to-end training runs through train.py on real digits audio (marked slow)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, small_digits_overrides

pytestmark = pytest.mark.slow


def run_train(*overrides: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "train.py"), *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **popen)
    if check and done.returncode:
        pytest.fail(f"train.py {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    return done


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {**state["state_dict"], "_step": torch.tensor(state["global_step"])}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def train_args(tmp_path_factory) -> list[str]:
    data_dir = tmp_path_factory.mktemp("digits_data")
    # optim.schedule.total_steps pins the cosine schedule to the 10-step run, so that a run
    # stopped at max_steps=6 and resumed to 10 trains on the uninterrupted run's learning rates.
    return [*small_digits_overrides(data_dir), "logger=csv", "checkpoint_every_n_steps=2",
            "trainer.val_check_interval=4", "optim.schedule.total_steps=10"]


@pytest.fixture(scope="module")
def uninterrupted(train_args, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_train(*train_args, "trainer.max_steps=10", f"hydra.run.dir={run_dir}")
    return run_dir


def test_run_writes_results_and_checkpoints(uninterrupted):
    results = json.loads((uninterrupted / "results.json").read_text())
    assert results["variant"] == {"size": "xs", "subsampling": "depthwise", "norm": "l2"}
    assert results["train_steps"] == 10 and results["parameters"] > 0
    assert set(results["test"]) == {"test", "unseen_speaker"}
    for rates in results["test"].values():
        assert 0 <= rates["wer"] <= 100 * 8 and rates["utterances"] == 8
    # The whole run's totals, not those of the tested (best) checkpoint's step.
    last = torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=False)
    assert results["train_audio_seconds"] == round(last["edge_conformer"]["audio_seconds"], 2)
    assert results["train_wall_seconds"] >= round(last["edge_conformer"]["train_seconds"], 2)
    assert results["checkpoint"] == str(uninterrupted / "checkpoints" / "last.ckpt")


def _validation_wers(run_dir: Path) -> dict[int, float]:
    """val/wer by optimiser step, from the CSV logger (which logs it at step - 1)."""
    (metrics,) = run_dir.rglob("metrics.csv")
    with metrics.open() as f:
        return {int(row["step"]) + 1: float(row["val/wer"])
                for row in csv.DictReader(f) if row.get("val/wer")}


def test_best_checkpoint_is_the_best_validation(uninterrupted):
    """Regression: periodic saves were once ranked by the previous validation's WER."""
    wers = _validation_wers(uninterrupted)
    (best,) = (uninterrupted / "checkpoints").glob("best-*.ckpt")
    step = int(torch.load(best, map_location="cpu", weights_only=False)["global_step"])
    assert step in wers, f"{best.name} was saved at step {step}, where no validation ran"
    assert wers[step] == min(wers.values())


def test_n_steps_then_resume_then_m_steps_equals_n_plus_m(train_args, uninterrupted, tmp_path):
    # Stopping at step 4, which both validates and saves, also checks that the resumed run
    # remembers that validation: one best checkpoint at the end, the uninterrupted run's.
    # test_checkpoint=best: the resumed run tests (and export takes) the best validated one.
    run_train(*train_args, "trainer.max_steps=4", f"hydra.run.dir={tmp_path}")
    run_train(*train_args, "trainer.max_steps=10", "test_checkpoint=best",
              f"hydra.run.dir={tmp_path}")
    assert_same_weights(uninterrupted / "checkpoints" / "last.ckpt",
                        tmp_path / "checkpoints" / "last.ckpt")
    best = sorted(p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert best == [p.name for p in (uninterrupted / "checkpoints").glob("best-*.ckpt")]
    results = json.loads((tmp_path / "results.json").read_text())
    assert Path(results["checkpoint"]).name == best[0]


def test_resume_with_dynamic_chunk_training_equals_uninterrupted(train_args, tmp_path):
    """model.streaming on: each step's chunk context is drawn from (seed, step), so a resumed
    run trains under the contexts the uninterrupted run trained under; validation and test
    add the deployed chunk context's WER."""
    from edge_conformer.training.chunking import DynamicChunks

    draws = [DynamicChunks(enabled=True).draw(seed=0, step=step) for step in range(10)]
    # The run trains at full context and under chunk masks, the resumed part too.
    assert None in draws and any(draws[4:])
    args = [*train_args, "model.streaming.enabled=true", "model.conv_context=chunk"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_train(*args, "trainer.max_steps=10", f"hydra.run.dir={whole}")
    run_train(*args, "trainer.max_steps=4", f"hydra.run.dir={resumed}")
    run_train(*args, "trainer.max_steps=10", f"hydra.run.dir={resumed}")
    assert_same_weights(whole / "checkpoints" / "last.ckpt", resumed / "checkpoints" / "last.ckpt")
    (metrics,) = whole.rglob("metrics.csv")
    with metrics.open() as f:
        assert any(row.get("val/wer_stream") for row in csv.DictReader(f))
    for rates in json.loads((whole / "results.json").read_text())["test"].values():
        assert 0 <= rates["wer_stream"] <= 100 * 8 and 0 <= rates["cer_stream"]


def test_killed_run_resumes_from_last_checkpoint(train_args, uninterrupted, tmp_path):
    """SIGKILL mid-training, then the same command again: it ends where the uninterrupted did."""
    args = [*train_args, "trainer.max_steps=10", f"hydra.run.dir={tmp_path}"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "WANDB_MODE": "offline"})
    deadline = time.monotonic() + 300
    # Kill as soon as the first checkpoint lands (Lightning writes it atomically, through a
    # temporary file): this tiny model trains the remaining steps in well under a second.
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.is_file(), "the run never wrote a checkpoint"
    killed_at = int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])
    assert killed_at < 10, "the run finished before it could be killed"
    resumed = run_train(*args)
    assert "resuming from" in resumed.stderr + resumed.stdout
    assert_same_weights(uninterrupted / "checkpoints" / "last.ckpt", last)
