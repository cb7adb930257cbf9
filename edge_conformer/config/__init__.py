"""Structured configs for conf/: schemas registered with Hydra's ConfigStore, and the checked
entry of train.py and export.py (entry.py). Imports neither torch nor Lightning.

conf/train.yaml and conf/export.yaml list `structured://edge_conformer.config` in
`hydra.searchpath`, so Hydra imports this package, and the schemas are registered, whoever
composes those configs (the entry points, tests, benchmarks, recipes).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from edge_conformer.config.schemas import SCHEMAS, ConfigError

__all__ = ["ConfigError", "group_options"]


def group_options(group: str) -> str:
    """`${group_options:model}` in a help text: the options of a config group, as Hydra
    finds them (conf/model/*.yaml and any other config source)."""
    loader = GlobalHydra.instance().config_loader()
    return ", ".join(sorted(loader.get_group_options(group)))


for _name, _schema in SCHEMAS.items():
    ConfigStore.instance().store(group="schema", name=_name, node=_schema)
if not OmegaConf.has_resolver("group_options"):
    OmegaConf.register_new_resolver("group_options", group_options)
