"""Whether W&B logs online: one decision for training (training/loggers.py) and export.

Online only when the user asked for it and W&B can authenticate: without a key (or a reachable
server) W&B stalls for minutes on init, and neither training nor export may block on it. A run
that stays offline lands under its run directory, for `wandb sync`.
"""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

OFFLINE_MODES = ("offline", "dryrun", "disabled")  # WANDB_MODE values that forbid the network
DEFAULT_BASE_URL = "https://api.wandb.ai"


def wandb_online(requested: bool) -> bool:
    """Log online: asked for, WANDB_MODE does not forbid it, and an API key is configured."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    return requested and mode not in OFFLINE_MODES and _has_api_key()


def _has_api_key() -> bool:
    """WANDB_API_KEY, or the ~/.netrc login `wandb login` writes for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no such file, or one netrc cannot parse
        return False
