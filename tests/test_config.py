"""The config schemas and the checked entry: a bad knob fails in one line naming it, in about a
second, before anything heavy is imported or any file is written; the optimiser and schedule
come from their `_target_`s; every YAML file composes against its schema."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, small_digits_overrides
from edge_conformer.config.entry import (
    MAX_CHECKED_COMBINATIONS,
    check_command_line,
    check_config,
    sweep_points,
    user_input_errors_first,
)
from edge_conformer.config.schemas import (
    BAD_DATA_POLICIES,
    CONV_CONTEXTS,
    FEATURE_NORMALIZATIONS,
    GATE_EXECUTOR_MODES,
    NORMS,
    PRENORMALIZERS,
    SUBSAMPLING_KINDS,
    ConfigError,
)
from edge_conformer.errors import UserInputError
from edge_conformer.training.schedules import check_optim, cosine, lr_schedule, optimizer_factory

CONF = REPO / "conf"
HEAVY_MODULES = ("torch", "lightning", "coremltools")


def composed(*overrides: str, config_name: str = "train"):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def run_entry(script: str, *args: str, cwd: Path, python_flags: tuple[str, ...] = ()):
    """(completed process, CPU seconds it used): CPU time, not wall time, so that a loaded
    machine does not make the speed checks flaky."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, *python_flags, str(REPO / script), *args], cwd=cwd,
        capture_output=True, text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize(("override", "names"), [
    ("model.norm=rms", "model.norm='rms' is not one of: l2, mad"),
    ("model=foo", "model='foo' is not one of: l, m, s, xs"),
    ("optim.schedule=step", "optim.schedule='step' is not one of: cosine, noam"),
    ("trainer.max_steps=abc", "trainer.max_steps: Value 'abc'"),
    ("data.max_duration=-1", "data.max_duration=-1.0 must be > 0"),
    ("test_checkpoint=first", "test_checkpoint='first' is not one of: last, best"),
    ("checkpoint_every_n_steps=0", "checkpoint_every_n_steps=0 must be >= 1"),
])
def test_a_bad_knob_fails_in_one_line_before_any_work(override, names, tmp_path):
    done, cpu_seconds = run_entry("train.py", override, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"train.py: {names}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout
    assert cpu_seconds < 15
    assert not list(tmp_path.iterdir())  # no data/, outputs/, W&B run or run id file


def test_help_answers_without_importing_torch(tmp_path):
    done, cpu_seconds = run_entry("train.py", "--help", cwd=tmp_path, python_flags=("-X",
                                                                                   "importtime"))
    assert done.returncode == 0 and cpu_seconds < 5
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert not {name.split(".")[0] for name in imported} & set(HEAVY_MODULES)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("train.py: train a Conformer-CTC")
    groups = {line.split(":")[0].strip() for line in lines if line.startswith("  ")}
    assert {"model", "data", "optim", "trainer", "logger"} <= groups and "export" not in groups
    assert not list(tmp_path.iterdir())


def test_export_help_shows_only_export_knobs(capsys):
    with pytest.raises(SystemExit) as exit_:
        check_command_line(CONF, "export", ["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and text.startswith("export.py: convert a trained checkpoint")
    assert "window_seconds: 8.0" in text and "model:" not in text and "trainer" not in text


@pytest.mark.parametrize(("config_name", "argv", "names"), [
    ("train", ["-m", "model.norm=l2,rms"], "model.norm='rms' is not one of"),
    ("train", ["optim.schedule=noam"], "choose it with optim/schedule=noam"),
    ("train", ["optim/schedule=noam", "optim.schedule.warmup_steps=0"],
     "optim.schedule.warmup_steps=0 must be >= 1"),
    ("train", ["trainer.max_step=3"], "trainer.max_step: Key 'max_step' not in 'TrainerConfig'"),
    ("train", ["model.d_model=100"], "model.d_model=100 must split into num_heads=4 heads"),
    ("train", ["data=lhotse"], "data.train_manifests, data.dev_manifests, data.test_manifests:"),
    ("export", ["ckpt=x", "out=y", "export.executor=fp32"], "export.executor='fp32' is not one"),
    ("export", ["ckpt=x", "out=y", "export.overlap_seconds=8"],
     "export.overlap_seconds=8.0 must lie in [0, window_seconds=8.0)"),
    ("export", ["ckpt=x"], "out: no value; give one with out=..."),
    ("export", ["ckpt=x", "out=y", "export.workers=0"], "export.workers=0 must be >= 1"),
])
def test_checked_entry_names_the_knob(config_name, argv, names, capsys):
    with pytest.raises(SystemExit) as exit_:
        check_command_line(CONF, config_name, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and names in err and len(err.strip().splitlines()) == 1


def test_a_good_command_line_passes_and_trainer_takes_any_argument_with_a_plus():
    check_command_line(CONF, "train", ["-m", "model.norm=l2,mad", "+trainer.limit_val_batches=2"])
    assert composed("+trainer.limit_val_batches=2").trainer.limit_val_batches == 2


@pytest.mark.parametrize(("group", "option"), [
    (group, path.stem) for group in ("model", "data", "optim", "optim/schedule", "trainer",
                                      "logger") for path in sorted((CONF / group).glob("*.yaml"))
])
def test_every_config_file_composes_against_its_schema(group, option):
    # data=lhotse leaves its manifests to the command line.
    manifests = ["data.train_manifests=[a]", "data.dev_manifests=[b]",
                 "data.test_manifests={test: [c]}"] if option == "lhotse" else []
    check_config(composed(f"{group}={option}", *manifests))


def test_sweeps_are_checked_in_full_or_value_by_value():
    small = sweep_points(["model.norm=l2,mad", "seed=1,2", "resume=false"])
    assert sorted(small) == sorted([[f"model.norm={n}", f"seed={s}", "resume=false"]
                                    for n in ("l2", "mad") for s in (1, 2)])
    values = [f"{v}" for v in range(MAX_CHECKED_COMBINATIONS)]
    large = sweep_points([f"seed={','.join(values)}", "model.norm=l2,mad"])
    assert len(large) == MAX_CHECKED_COMBINATIONS  # not all 2 x MAX: each value once instead
    assert {p[0] for p in large} == {f"seed={v}" for v in values}
    assert {p[1] for p in large} == {"model.norm=l2", "model.norm=mad"}


def test_schema_choices_are_the_codes_choices():
    from edge_conformer.data.features import NORMALIZATIONS
    from edge_conformer.data.manifests import BAD_DATA_POLICIES as corpus_policies
    from edge_conformer.mil.executor import EXECUTOR_MODES
    from edge_conformer.model.modules import CONV_CONTEXTS as conv_contexts
    from edge_conformer.model.norms import NORMS as norm_layers
    from edge_conformer.model.subsampling import SUBSAMPLING_KINDS as subsampling_kinds
    from edge_conformer.numerics import PRENORMALIZERS as prenormalizers

    assert set(NORMS) == set(norm_layers) and set(SUBSAMPLING_KINDS) == set(subsampling_kinds)
    assert set(CONV_CONTEXTS) == set(conv_contexts)
    assert set(FEATURE_NORMALIZATIONS) == set(NORMALIZATIONS)
    assert set(PRENORMALIZERS) == set(prenormalizers)
    assert set(BAD_DATA_POLICIES) == set(corpus_policies)
    assert set(GATE_EXECUTOR_MODES) == set(EXECUTOR_MODES) - {"fp32"}


def test_default_optimiser_and_schedule_are_the_recipes():
    """AdamW (lr 1e-3, betas 0.9/0.98, weight decay 1e-3) and a cosine over trainer.max_steps
    with 100 warm-up steps: what the recipe's measured results were trained with."""
    optim = OmegaConf.to_container(composed("trainer.max_steps=500").optim, resolve=True)
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = optimizer_factory(optim)([parameter])
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (1e-3, (0.9, 0.98),
                                                                          1e-3)
    factor, expected = lr_schedule(optim), cosine(100, 500)
    assert [factor(s) for s in (0, 50, 100, 300, 500, 600)] == [
        expected(s) for s in (0, 50, 100, 300, 500, 600)]
    assert factor(500) == pytest.approx(0.01)  # decays over trainer.max_steps


@pytest.mark.parametrize(("overrides", "names"), [
    (["optim._target_=torch.optim.Adamw"], "optim._target_='torch.optim.Adamw' cannot be imported"),
    (["optim._target_=torch.optim.SGD"], "unexpected keyword argument 'betas'"),
    (["optim.schedule._target_=edge_conformer.training.schedules.noam"],
     "optim.schedule._target_='edge_conformer.training.schedules.noam' fails"),
])
def test_a_target_that_cannot_be_built_fails_naming_it(overrides, names):
    optim = OmegaConf.to_container(composed(*overrides).optim, resolve=True)
    with pytest.raises(ConfigError, match=names):
        check_optim(optim)


def test_a_user_input_error_under_a_teardown_error_is_raised_alone():
    def fail_in_teardown(cause: Exception) -> None:
        try:
            raise cause
        except Exception:
            raise RuntimeError("Please call iter(combined_loader) first.")  # noqa: B904

    with pytest.raises(UserInputError, match="no training batch") as raised:
        with user_input_errors_first():
            fail_in_teardown(ConfigError("cuts.jsonl.gz: an epoch yields no training batch"))
    assert raised.value.__suppress_context__
    with pytest.raises(RuntimeError, match="combined_loader"):  # not the project's: untouched
        with user_input_errors_first():
            fail_in_teardown(KeyError("a bug"))


@pytest.mark.slow
def test_sgd_from_the_command_line_trains(tmp_path):
    run_dir = tmp_path / "run"
    done, _ = run_entry(
        "train.py", *small_digits_overrides(tmp_path / "data"), "logger=csv", "optim=sgd",
        "optim.momentum=0.9", "trainer.max_steps=2", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert checkpoint["edge_conformer"]["config"]["optim"]["_target_"] == "torch.optim.SGD"
    group = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert group["momentum"] == 0.9 and "betas" not in group  # torch.optim.SGD's state
