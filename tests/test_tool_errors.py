"""A path that cannot be used: one line naming it, exit status 1, no traceback, in every tool.

The library raises UserInputError naming the file (checked here case by case, in process);
each tool turns it into `tool: message` as its last stderr line (checked by running it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.tokenizer import train_tokenizer
from edge_conformer.errors import UserInputError
from edge_conformer.runtime.bundle import (
    PACKAGE_DIR,
    frontend_description,
    load_bundle,
    package_executor,
    write_frontend,
)
from edge_conformer.runtime.checkpoint import TOKENIZER_FILE, load_checkpoint
from edge_conformer.runtime.windowing import WindowSpec


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.ckpt"
    path.write_text("these are my notes, not a checkpoint\n" * 20)
    return path


def _empty(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    return path, "not a PyTorch checkpoint (EOFError"


def _text(tmp_path: Path) -> tuple[Path, str]:
    return text_file(tmp_path), "not a PyTorch checkpoint (UnpicklingError"


def _truncated(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    return path, "not a PyTorch checkpoint (RuntimeError"


def _a_tensor(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    return path, "not a training checkpoint"


def _foreign(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    return path, "not an edge-conformer training checkpoint"


def _missing(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "missing.ckpt", "no such checkpoint or run directory"


def _run_without_results(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path, "without results.json"


def _unreadable_results(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "results.json").write_text("{broken")
    return tmp_path / "results.json", "unreadable run results"


def _results_naming_a_lost_checkpoint(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "results.json").write_text('{"checkpoint": "/nowhere/best.ckpt"}')
    return tmp_path / "results.json", "names /nowhere/best.ckpt, which does not exist"


BAD_CHECKPOINT_FILES = [_empty, _text, _truncated, _a_tensor, _foreign, _missing]
BAD_RUN_DIRS = [_run_without_results, _unreadable_results, _results_naming_a_lost_checkpoint]


@pytest.mark.parametrize(
    "make_bad", BAD_CHECKPOINT_FILES + BAD_RUN_DIRS, ids=lambda f: f.__name__.strip("_")
)
def test_bad_checkpoints_raise_one_line_naming_the_file(make_bad, tmp_path: Path) -> None:
    path, problem = make_bad(tmp_path)
    given = tmp_path if make_bad in BAD_RUN_DIRS else path  # a run directory, or the file
    with pytest.raises(UserInputError) as error:
        load_checkpoint(given, tokenizer_dir=tmp_path / "tokenizer")
    message = str(error.value)
    assert str(path) in message and problem in message and "\n" not in message


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    """An export directory with a real front end and tokenizer, and a package that is not one."""
    directory = tmp_path / "export"
    directory.mkdir()
    tokenizer = train_tokenizer(["one two three four five"] * 10, directory / TOKENIZER_FILE, 16)
    window = WindowSpec(window_frames=64, overlap_frames=16)
    write_frontend(directory, frontend_description(LogMelFeatures(), window, tokenizer.vocab_size))
    package = directory / PACKAGE_DIR
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "model.mlmodel").write_bytes(b"\xff\xfe not a protobuf spec \x00" * 8)
    (package / "Manifest.json").write_text(
        '{"rootModelIdentifier": "m", "itemInfoEntries": {"m": {"path": "model.mlmodel"}}}'
    )
    return directory


def test_an_unreadable_package_is_named(export_dir: Path) -> None:
    bundle = load_bundle(export_dir)  # front end and tokenizer are fine
    with pytest.raises(UserInputError, match="unreadable Core ML package") as error:
        package_executor(bundle, "fp16")
    assert str(export_dir / PACKAGE_DIR) in str(error.value)


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (lambda d: (d / "frontend.json").unlink(), "not an export directory"),
        (lambda d: (d / "frontend.json").write_text("{truncated"), "unreadable export front end"),
        (lambda d: (d / "frontend.json").write_text("{}"), r"not an export front end \(KeyError"),
        (lambda d: (d / TOKENIZER_FILE).write_bytes(b"junk"), "unreadable tokenizer"),
    ],
    ids=["no-frontend", "bad-json", "no-window", "bad-tokenizer"],
)
def test_a_broken_export_directory_is_named(export_dir: Path, breakage, problem: str) -> None:
    breakage(export_dir)
    with pytest.raises(UserInputError, match=problem) as error:
        load_bundle(export_dir)
    assert str(export_dir) in str(error.value) and "\n" not in str(error.value)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(done: subprocess.CompletedProcess, tool: str, path: Path) -> str:
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"{tool}: ") and str(path) in last_line, last_line
    return last_line


def test_export_py_names_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    ckpt, out = text_file(tmp_path), tmp_path / "export"
    done = run_tool("export.py", f"ckpt={ckpt}", f"out={out}")
    assert "not a PyTorch checkpoint" in assert_one_line_error(done, "export.py", ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.name]  # no staging left behind


def test_transcribe_names_a_missing_model(tmp_path: Path) -> None:
    model = tmp_path / "outputs" / "no-such-run"
    done = run_tool("tools/transcribe.py", "--model", str(model), "a.wav")
    assert "no such checkpoint" in assert_one_line_error(done, "transcribe.py", model)


def test_transcribe_names_an_unreadable_package(export_dir: Path) -> None:
    done = run_tool("tools/transcribe.py", "--model", str(export_dir), "--runtime", "executor",
                    "a.wav")
    line = assert_one_line_error(done, "transcribe.py", export_dir / PACKAGE_DIR)
    assert "unreadable Core ML package" in line


def test_stress_checkpoint_names_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    source = text_file(tmp_path)
    done = run_tool("tools/stress_checkpoint.py", str(source), str(tmp_path / "out.ckpt"),
                    "--scale", "256")
    assert "not a PyTorch checkpoint" in assert_one_line_error(done, "stress_checkpoint.py", source)
    assert not (tmp_path / "out.ckpt").exists()


def test_compare_runs_names_an_unreadable_results_file(tmp_path: Path) -> None:
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    results.write_text("{truncated")
    done = run_tool("tools/compare_runs.py", str(tmp_path), "--out", str(tmp_path / "report"))
    assert_one_line_error(done, "compare_runs.py", results)
