"""Where an export is built, and how it replaces what was at its path: never a user's files.

An export is built in a hidden staging directory beside `out` that holds EXPORT_MARKER from
the start. When parity passes, the staging directory is renamed to `out`; when it fails, to
`<out>.rejected`. Either rename replaces a directory already there only if that directory
holds the marker too, i.e. if an earlier export wrote it. Anything else at those paths (a
folder with the user's files, `.`, the working directory's parents, the repository) is
refused by `check_publishable` before any work starts, and nothing is deleted.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import edge_conformer
from edge_conformer.errors import UserInputError

EXPORT_MARKER = ".edge-conformer-export"
MARKER_TEXT = (
    "Written by edge-conformer's export.py. A later export to this path replaces this\n"
    "directory whole; a directory without this file is never replaced.\n"
)
REJECTED_SUFFIX = ".rejected"
# The folder that holds the edge_conformer package: the repository root in a checkout.
CODE_ROOT = Path(edge_conformer.__file__).resolve().parent.parent


def is_marked_export(path: Path) -> bool:
    """Whether `path` is a directory an export wrote (and a new export may replace)."""
    return (path / EXPORT_MARKER).is_file()


def rejected_dir(out: Path) -> Path:
    """Where a failed export's report and package are kept."""
    return out.with_name(out.name + REJECTED_SUFFIX)


def _refusal(path: Path) -> str | None:
    """Why an export must not replace `path` (None: it may)."""
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "is the working directory or one above it"
    if resolved == CODE_ROOT or resolved in CODE_ROOT.parents:
        return "is the repository root or one above it"
    if path.is_symlink():
        return "is a symbolic link"
    if path.exists() and not path.is_dir():
        return "exists and is not a directory"
    if path.is_dir() and not is_marked_export(path):
        return f"exists and is not an export directory (no {EXPORT_MARKER} file in it)"
    return None


def check_publishable(out: str | Path) -> Path:
    """`out` made absolute, or UserInputError if exporting there could delete the user's files.

    Checks `out` and `<out>.rejected`, the two paths an export may replace; call it before
    any work, so that a refused export costs nothing.
    """
    out = Path(os.path.abspath(out))  # not resolve(): a symlink must be seen, not followed
    if out.parent == out:
        raise UserInputError(f"out={out}: is the file system root; name a new directory")
    for path in (out, rejected_dir(out)):
        reason = _refusal(path)
        if reason:
            raise UserInputError(
                f"out={out}: {path} {reason}; name a new directory or an earlier export"
            )
    return out


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A hidden, marked sibling of `out` to build the export in, removed if the build fails.

    A sibling, so that publishing is one rename on the same file system; not mkdtemp, whose
    0700 mode the published directory would keep.
    """
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}-{secrets.token_hex(3)}")
    staging.mkdir(parents=True)
    try:
        (staging / EXPORT_MARKER).write_text(MARKER_TEXT)
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
        raise


def _replace(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`, replacing an earlier export there (checked again: the
    user may have put something at `target` while the export ran)."""
    reason = _refusal(target)
    if reason:
        raise UserInputError(f"{target} {reason} (it appeared during the export, which is in "
                             f"{staging})")
    if not target.exists():
        staging.rename(target)
        return
    replaced = staging.with_name(staging.name.replace(".staging-", ".replaced-"))
    target.rename(replaced)
    staging.rename(target)
    shutil.rmtree(replaced)


def publish(staging: Path, out: Path) -> Path:
    """Make a passed export's staging directory `out`; returns `out`."""
    _replace(staging, out)
    return out


def reject(staging: Path, out: Path) -> Path:
    """Keep a failed export (report and package) in <out>.rejected/; returns that path."""
    rejected = rejected_dir(out)
    _replace(staging, rejected)
    return rejected
