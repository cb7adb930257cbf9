"""The one decision whether W&B logs online, for training and export alike."""

from __future__ import annotations

import pytest

from edge_conformer.wandb_mode import wandb_online


@pytest.fixture
def no_wandb_settings(monkeypatch, tmp_path):
    """No key, no mode, no ~/.netrc: each test adds what it needs."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


@pytest.mark.parametrize(
    ("requested", "environment", "online"),
    [
        (True, {"WANDB_API_KEY": "k"}, True),
        (False, {"WANDB_API_KEY": "k"}, False),  # not asked for
        (True, {}, False),  # no key: W&B would stall on init
        (True, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, False),
        (True, {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}, False),
        (True, {"WANDB_API_KEY": "k", "WANDB_MODE": "online"}, True),
    ],
)
def test_online_only_when_asked_for_allowed_and_authenticated(
    no_wandb_settings, requested, environment, online
) -> None:
    for name, value in environment.items():
        no_wandb_settings.setenv(name, value)
    assert wandb_online(requested) is online


@pytest.mark.parametrize(("host", "online"), [("api.wandb.ai", True), ("github.com", False)])
def test_a_netrc_login_counts_only_for_the_wandb_host(no_wandb_settings, tmp_path, host, online):
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    assert wandb_online(True) is online
