"""Publishing an export never deletes what a user wrote: only an earlier export is replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from edge_conformer.errors import UserInputError
from edge_conformer.export import pipeline
from edge_conformer.export.publish import (
    CODE_ROOT,
    EXPORT_MARKER,
    check_publishable,
    publish,
    reject,
    rejected_dir,
    staging_dir,
)


def users_folder(path: Path) -> Path:
    """A folder of the user's own: a note and a data file one level down."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def assert_untouched(path: Path) -> None:
    assert (path / "notes.txt").read_text() == "my notes"
    assert (path / "sub" / "data.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt", "sub"]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def exported(out: Path, content: str) -> Path:
    """Publish a finished (stand-in) export holding content.txt to `out`."""
    with staging_dir(check_publishable(out)) as staging:
        (staging / "content.txt").write_text(content)
    return publish(staging, out)


def test_export_py_refuses_a_users_folder_before_loading_the_checkpoint(tmp_path: Path) -> None:
    out = users_folder(tmp_path / "mine")
    missing_ckpt = tmp_path / "missing.ckpt"  # loading it first would fail naming it instead
    done = subprocess.run(
        [sys.executable, str(REPO / "export.py"), f"ckpt={missing_ckpt}", f"out={out}"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"export.py: out={out}:") and "not an export directory" in last_line
    assert "Traceback" not in done.stderr and str(missing_ckpt) not in done.stderr
    assert_untouched(out)
    assert siblings(out) == []  # no staging or .rejected directory either


def test_export_checkpoint_checks_out_before_any_work(tmp_path: Path, monkeypatch) -> None:
    def must_not_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before `out` was checked")

    monkeypatch.setattr(pipeline, "load_checkpoint", must_not_load)
    out = users_folder(tmp_path / "mine")
    with pytest.raises(UserInputError, match="not an export directory"):
        pipeline.export_checkpoint("any.ckpt", out, settings=None)
    assert_untouched(out)


def test_paths_above_the_work_are_refused(tmp_path: Path, monkeypatch) -> None:
    cwd = tmp_path / "project" / "work"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    for out in (".", "..", str(tmp_path), "/"):
        with pytest.raises(UserInputError, match="working directory or one above it|root"):
            check_publishable(out)
    for out in (CODE_ROOT, CODE_ROOT.parent):
        with pytest.raises(UserInputError, match="repository root"):
            check_publishable(out)


def test_a_file_a_symlink_and_a_users_rejected_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(exported(tmp_path / "old", "old export"))
    users_folder(tmp_path / "new.rejected")
    for name, reason in [("file", "not a directory"), ("link", "symbolic link"),
                         ("new", "new.rejected exists and is not an export directory")]:
        with pytest.raises(UserInputError, match=reason):
            check_publishable(tmp_path / name)
    assert_untouched(tmp_path / "new.rejected")


def test_a_passed_export_replaces_an_earlier_export(tmp_path: Path) -> None:
    out = exported(tmp_path / "export", "first")
    assert (out / EXPORT_MARKER).is_file()
    exported(out, "second")  # the earlier export passes the check, and is replaced whole
    assert (out / "content.txt").read_text() == "second"
    assert sorted(p.name for p in out.iterdir()) == sorted([EXPORT_MARKER, "content.txt"])
    assert siblings(out) == []  # no staging or replaced directory left behind


def test_a_failed_export_replaces_only_an_earlier_failed_one(tmp_path: Path) -> None:
    out = check_publishable(tmp_path / "export")
    for report in ("first failure", "second failure"):
        with staging_dir(check_publishable(out)) as staging:
            (staging / "parity.md").write_text(report)
        assert reject(staging, out) == rejected_dir(out)
    assert (rejected_dir(out) / "parity.md").read_text() == "second failure"
    assert not out.exists() and siblings(out) == ["export.rejected"]


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    out = check_publishable(tmp_path / "export")
    with pytest.raises(RuntimeError, match="conversion failed"), staging_dir(out):
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_made_during_the_export_is_not_replaced(tmp_path: Path) -> None:
    out = check_publishable(tmp_path / "export")
    with staging_dir(out) as staging:
        users_folder(out)  # the user creates it while the export runs
    with pytest.raises(UserInputError, match="appeared during the export"):
        publish(staging, out)
    assert_untouched(out)
    assert (staging / EXPORT_MARKER).is_file()  # the finished export is kept for the user
