"""The checked entry of train.py and export.py: their command line's config, composed and
checked against edge_conformer/config/schemas.py before they import torch or write a file.

A bad value then costs a second and one line naming the knob, e.g.
`train.py: model.norm='rms' is not one of: l2, mad`, instead of failing minutes later (after
corpus preparation, a W&B run, a written run directory) under a long traceback.
HYDRA_FULL_ERROR=1 shows the traceback as well.
"""

from __future__ import annotations

import itertools
import math
import os
import string
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, Node, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException, ValidationError

from edge_conformer.config import group_options
from edge_conformer.config.schemas import ConfigError
from edge_conformer.errors import UserInputError

# A sweep with more combinations than this is checked value by value: every value of every
# swept knob once, not every combination (a 10 x 10 x 10 sweep would take minutes to check).
MAX_CHECKED_COMBINATIONS = 16
CONFIG_ERRORS = (HydraException, OmegaConfBaseException, ConfigError)


def check_command_line(config_dir: Path, config_name: str, argv: list[str] | None = None) -> None:
    """Compose and check the config `argv` (default: sys.argv[1:]) asks for, and each sweep
    point under -m; on a bad config print one line and exit 1. --help prints the entry
    point's help and exits. Hydra's own help and info flags pass through unchecked, as do
    extra config dirs (Hydra reports those itself)."""
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if (args.hydra_help or args.info or args.shell_completion
            or args.config_path or args.config_dir or args.experimental_rerun):
        return
    config_name = args.config_name or config_name
    points = sweep_points(args.overrides) if args.multirun else [args.overrides]
    with initialize_config_dir(str(config_dir.resolve()), version_base="1.3"):
        try:
            if args.help:
                print_help(config_name, args.overrides)
                sys.exit(0)
            for overrides in points:
                check_config(compose(config_name, overrides=overrides))
        except CONFIG_ERRORS as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{Path(sys.argv[0]).name}: {describe(error)}", file=sys.stderr)
            sys.exit(1)


def print_help(config_name: str, overrides: list[str]) -> None:
    """Print `hydra.help.template` with $CONFIG, the composed config, as Hydra's --help does,
    without the listing of every config group Hydra builds first whether the template shows
    it or not (a second of work, for text the templates here leave out)."""
    cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    print(string.Template(template).safe_substitute(CONFIG=OmegaConf.to_yaml(cfg)))


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The override lists of a -m sweep's runs: all combinations when there are at most
    MAX_CHECKED_COMBINATIONS, else enough of them to hold each swept value once."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_discrete_sweep():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        elif not override.is_sweep_override():
            choices.append([override.input_line])
        # An interval sweep (for optimising sweepers) has no values to list: left unchecked.
    if math.prod(len(values) for values in choices) <= MAX_CHECKED_COMBINATIONS:
        return [list(point) for point in itertools.product(*choices)]
    longest = max(len(values) for values in choices)
    return [[values[i % len(values)] for values in choices] for i in range(longest)]


def check_config(cfg: DictConfig) -> None:
    """Refuse `???` values left unset, then build every schema object of `cfg`, which runs
    their range and choice checks (`__post_init__`). Nodes are built innermost first, so a
    ConfigError is reported with the full key of the node it belongs to."""
    nodes = list(_nodes(cfg, ""))
    missing = [key for node, key in nodes if node._is_missing()]
    if missing:  # `???` in the YAML: values only the command line can give
        raise ConfigError(f"{', '.join(missing)}: no value; give one with "
                          + " ".join(f"{key}=..." for key in missing))
    for node, key in [*nodes, (cfg, "")]:  # the root last: its own top-level knobs
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) not in (dict, None):
            try:
                OmegaConf.to_object(node)
            except ConfigError as error:
                raise ConfigError(f"{key}.{error}" if key else str(error)) from error


def _nodes(node: DictConfig, key: str) -> Iterator[tuple[Node, str]]:
    """(node, its full key) for every node below `node`, children before their parents,
    without resolving interpolations."""
    for child_key in node:
        child = node._get_node(child_key)
        child_full_key = f"{key}.{child_key}" if key else str(child_key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            yield from _nodes(child, child_full_key)
        yield child, child_full_key


def describe(error: Exception) -> str:
    """One line naming the knob (or group) and what is wrong with it. Call it while Hydra
    is initialised: a value given to a config group's key lists the group's options."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option!r} is not one of: {', '.join(sorted(error.options or []))}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if not (isinstance(cause, OmegaConfBaseException) and cause.full_key):
        return _first_line(str(error))
    group = cause.full_key.replace(".", "/")
    options = group_options(group) if isinstance(cause, ValidationError) else ""
    if not options:
        return f"{cause.full_key}: {_first_line(cause.msg)}"
    # A value given to a config group's node, e.g. optim.schedule=noam for optim/schedule=noam.
    if cause.value in options.split(", "):
        return f"{cause.full_key} is a config group: choose it with {group}={cause.value}"
    return f"{cause.full_key}={cause.value!r} is not one of: {options} (choose with {group}=NAME)"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0]


@contextmanager
def user_input_errors_first() -> Iterator[None]:
    """Re-raise the UserInputError an error chain started from, for the entry point to print
    as its last line (edge_conformer/errors.py): when a project check stops training inside
    Lightning, Lightning's teardown raises an error of its own on top of it."""
    try:
        yield
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, UserInputError):
            cause = cause.__cause__ or cause.__context__
        if cause is None or cause is error:
            raise
        raise cause from None
