"""tools/compare_runs.py on a real four-variant sweep, and on runs with exports beside them.

It reads the project's own files only (results.json, parity.json, wandb_run_id.txt, the run's
.hydra/config.yaml): W&B is written to, never read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from record_samples import export_report, run_results, set_parity

from conftest import REPO, small_digits_overrides
from edge_conformer.records import ErrorRates, ExportReport, Variant

VARIANTS = {(s, n) for s in ("regular", "depthwise") for n in ("l2", "mad")}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compare_runs(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(REPO / "tools" / "compare_runs.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """python train.py -m model.subsampling=regular,depthwise model.norm=l2,mad (tiny runs)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "multirun"
    cmd = [sys.executable, str(REPO / "train.py"), "-m",
           "model.subsampling=regular,depthwise", "model.norm=l2,mad",
           # Few buckets: with 10, no bucket of the 48 short utterances fills a batch and the
           # training sampler (drop_last) yields none.
           *small_digits_overrides(root / "data"), "data.num_buckets=2", "trainer.max_steps=3",
           "trainer.val_check_interval=3", "sweep_name=test-sweep", f"hydra.sweep.dir={sweep}"]
    # The default sweep subdir names each run after all its overrides: with paths and this many
    # overrides, that takes conf/train.yaml's short_dirname to stay a valid file name.
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_sweep_leaves_four_runs_with_their_variants_and_wandb_runs(sweep_dir):
    results = [json.loads(p.read_text()) for p in sweep_dir.rglob("results.json")]
    assert {(r["variant"]["subsampling"], r["variant"]["norm"]) for r in results} == VARIANTS
    assert all(r["variant"]["size"] == "xs" and r["train_steps"] == 3 for r in results)
    offline_runs = list(sweep_dir.rglob("wandb/offline-run-*"))
    assert len(offline_runs) == 4
    ids = {r["wandb_run_id"] for r in results}
    assert len(ids) == 4 and {p.name.rsplit("-", 1)[1] for p in offline_runs} == ids


@pytest.mark.slow
def test_compare_runs_tabulates_and_plots_the_sweep(sweep_dir, tmp_path):
    compare_runs(str(sweep_dir), "--out", str(tmp_path))
    rows = table_rows((tmp_path / "comparison.md").read_text())
    assert len(rows) == 4
    assert {(row[3], row[4]) for row in rows} == VARIANTS
    # Depthwise separable subsampling has fewer parameters than two regular 3x3 convolutions.
    params = {(row[3], row[4]): float(row[5]) for row in rows}
    assert params[("depthwise", "l2")] < params[("regular", "l2")]
    assert all(row[-2] == "not exported" for row in rows)
    # From each run's wandb_run_id.txt and .hydra/config.yaml: its own W&B run, all in the
    # sweep's group.
    ids = {json.loads(p.read_text())["wandb_run_id"] for p in sweep_dir.rglob("results.json")}
    assert {row[1] for row in rows} == {f"{run_id} (test-sweep)" for run_id in ids}
    picture = (tmp_path / "comparison.png").read_bytes()
    assert picture.startswith(PNG_MAGIC) and len(picture) > 10_000


def _fake_run(run_dir: Path, size: str, subsampling: str, norm: str, wer: float) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    checkpoint = run_dir / "checkpoints" / "best-step=10.ckpt"
    run_results(variant=Variant(size, subsampling, norm), checkpoint=str(checkpoint),
                test={"test-other": ErrorRates(wer=wer, cer=wer / 2, utterances=100)},
                ).write(run_dir / "results.json")
    return checkpoint


def _parity(checkpoint: Path, wer_fp16: float, identical: float) -> ExportReport:
    reasons = () if identical >= 0.99 else (f"test-other: identical transcripts {identical}",)
    result = set_parity(wer_fp32=20.0, wer_fp16=wer_fp16, identical=identical)
    return export_report(test_sets={"test-other": result}, reasons=reasons,
                         checkpoint=str(checkpoint), package_bytes=3 * 2**20)


def test_exports_are_matched_to_their_runs_by_place_or_checkpoint(tmp_path):
    inside = _fake_run(tmp_path / "runs" / "a", "s", "depthwise", "mad", 20.0)
    elsewhere = _fake_run(tmp_path / "runs" / "b", "s", "regular", "l2", 21.0)
    _fake_run(tmp_path / "runs" / "c", "s", "regular", "mad", 22.0)
    (tmp_path / "runs" / "a" / "export").mkdir()
    _parity(inside, 20.0, 1.0).write(tmp_path / "runs" / "a" / "export" / "parity.json")
    (tmp_path / "exports" / "b").mkdir(parents=True)  # given separately, found by checkpoint
    _parity(elsewhere, 23.5, 0.9).write(tmp_path / "exports" / "b" / "parity.json")

    compare_runs(str(tmp_path / "runs"), str(tmp_path / "exports"), "--out", str(tmp_path))
    rows = {row[0]: row for row in table_rows((tmp_path / "comparison.md").read_text())}
    assert rows["a"][-3:] == ["20.00 / 20.00 (100%)", "passed", "3.0"]
    assert rows["b"][-3:] == ["20.00 / 23.50 (90%)", "FAILED", "3.0"]
    assert rows["c"][-3:] == ["–", "not exported", "–"]
    assert (tmp_path / "comparison.png").read_bytes().startswith(PNG_MAGIC)


def test_wandb_id_and_group_come_from_the_run_directory_not_from_wandb(tmp_path):
    """wandb_run_id.txt gives the id, the W&B logger's group in .hydra/config.yaml the group
    (the sweep's name, as conf/logger/wandb.yaml sets it); a run not logged to W&B has none."""
    _fake_run(tmp_path / "runs" / "logged", "s", "depthwise", "mad", 20.0)
    (tmp_path / "runs" / "logged" / "wandb_run_id.txt").write_text("abc123\n")
    hydra_dir = tmp_path / "runs" / "logged" / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text(
        "sweep_name: ls-ablation\nlogger:\n  project: edge-conformer\n  group: ${sweep_name}\n")
    _fake_run(tmp_path / "runs" / "csv-only", "s", "regular", "l2", 21.0)

    compare_runs(str(tmp_path / "runs"), "--out", str(tmp_path))
    rows = {row[0]: row for row in table_rows((tmp_path / "comparison.md").read_text())}
    assert rows["logged"][1] == "abc123 (ls-ablation)"
    assert rows["csv-only"][1] == "–"
    assert rows["logged"][-2] == "not exported"  # parity comes from parity.json files only
