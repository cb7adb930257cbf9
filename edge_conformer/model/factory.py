"""Build the Conformer-CTC a config names (conf/model/*.yaml), without Lightning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate

from edge_conformer.model.conformer import ConformerCTC

# Keys of conf/model that configure training, not the network (edge_conformer/training).
TRAINING_KEYS = ("streaming",)


def build_model(model_cfg: Mapping[str, Any], vocab_size: int, feat_dim: int) -> ConformerCTC:
    """The Conformer-CTC of `model_cfg` (a conf/model/*.yaml) for a given vocabulary."""
    arguments = {key: value for key, value in model_cfg.items() if key not in TRAINING_KEYS}
    return instantiate(arguments, vocab_size=vocab_size, feat_dim=feat_dim, _convert_="all")
