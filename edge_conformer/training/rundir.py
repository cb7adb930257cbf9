"""Run directory names that stay valid however many overrides a command carries.

conf/train.yaml names a run's directory after its overrides (Hydra's `override_dirname`), so the
same command always lands in the same directory and resumes there. A LibriSpeech command with
split lists and a dozen knobs makes that name longer than the 255 bytes a file name may have.
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

MAX_NAME_CHARS = 120  # well inside the 255-byte limit, and readable in a listing
DIGEST_CHARS = 8


def short_dirname(overrides: str) -> str:
    """One directory level named after `overrides`: as they are when short and free of "/";
    else with "/" as "_", cut to MAX_NAME_CHARS, and a digest of the original overrides, so that
    the name stays unique and the same overrides still map to the same directory."""
    name = overrides.replace("/", "_")  # a path in an override would nest directories
    if name == overrides and len(name) <= MAX_NAME_CHARS:
        return name
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:DIGEST_CHARS]
    return f"{name[:MAX_NAME_CHARS - DIGEST_CHARS - 1]}-{digest}"


def register_resolvers() -> None:
    """Make `${short_dirname:...}` available to configs (call before Hydra composes)."""
    if not OmegaConf.has_resolver("short_dirname"):
        OmegaConf.register_new_resolver("short_dirname", short_dirname)
