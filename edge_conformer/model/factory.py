"""Build the Conformer-CTC a config names (conf/model/*.yaml), without Lightning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate

from edge_conformer.model.conformer import ConformerCTC


def build_model(model_cfg: Mapping[str, Any], vocab_size: int, feat_dim: int) -> ConformerCTC:
    """The Conformer-CTC of `model_cfg` (a conf/model/*.yaml) for a given vocabulary."""
    return instantiate(model_cfg, vocab_size=vocab_size, feat_dim=feat_dim, _convert_="all")
