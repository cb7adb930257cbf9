"""checkpoint -> Neural Engine graph -> FP16 .mlpackage -> WER parity gate -> published directory.

`export_checkpoint` builds the whole export directory (see bundle.py) in a hidden staging
directory beside the target, and renames it into place only when parity passes: a failed
export never publishes a package, and never touches a directory already there. Its report is
kept in <out>.rejected/ for the user to read.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from edge_conformer.data.manifests import load_cuts
from edge_conformer.export.convert import convert_to_coreml
from edge_conformer.export.graph import build_ane_model
from edge_conformer.export.parity import (
    TABLE_COLUMNS,
    ParityThresholds,
    Recognizers,
    featurised_utterances,
    gate_failures,
    measure_test_set,
    parity_markdown,
    parity_rows,
)
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.numerics import PRENORMALIZERS
from edge_conformer.runtime.bundle import (
    COREML_AVAILABLE,
    COREML_UNAVAILABLE_NOTE,
    PACKAGE_DIR,
    PARITY_JSON,
    PARITY_MD,
    coreml_logits,
    executor_logits,
    feature_settings,
    frontend_description,
    load_bundle,
    write_frontend,
)
from edge_conformer.runtime.checkpoint import LoadedCheckpoint, load_checkpoint
from edge_conformer.runtime.windowing import (
    WindowSpec,
    torch_window_runner,
    whole_utterance_logits,
    windowed_logits,
)

log = logging.getLogger(__name__)

REJECTED_SUFFIX = ".rejected"
GATE_EXECUTOR_MODES = ("fp16", "fp16-strict")


@dataclass(frozen=True)
class ExportSettings:
    """The `export.` knobs of conf/export/default.yaml (see there for what each one does)."""

    prenormalizer: str
    softmax_rescale: bool
    executor: str
    window_seconds: float
    overlap_seconds: float
    test_sets: list[str] | None
    max_utterances: int | None
    min_identical: float
    max_wer_delta: float
    wandb: bool
    data_dir: str | None

    def __post_init__(self) -> None:
        # Checked before the minutes of conversion, not after. The executor's "fp32" mode
        # checks the executor itself: as a gate it would prove nothing about FP16.
        if self.executor not in GATE_EXECUTOR_MODES:
            raise ValueError(
                f"export.executor must be one of {GATE_EXECUTOR_MODES}, got {self.executor!r}"
            )
        if self.prenormalizer not in PRENORMALIZERS:
            raise ValueError(
                f"export.prenormalizer must be one of {PRENORMALIZERS}, got {self.prenormalizer!r}"
            )


@dataclass(frozen=True)
class ExportOutcome:
    passed: bool
    directory: Path  # the published export, or <out>.rejected/ when parity failed
    report: dict  # the content of parity.json


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _test_manifests(loaded: LoadedCheckpoint, settings: ExportSettings) -> dict[str, Path]:
    """The manifests of the test sets to check, from the training recipe's own preparer.

    Only the preparer runs (idempotent: it finds the training run's manifests), not the
    DataModule's prepare_data, which may also train a tokenizer or store features.
    """
    data_cfg = dict(loaded.config["data"])
    if settings.data_dir is not None:
        data_cfg["data_dir"] = settings.data_dir
    datamodule = instantiate(data_cfg, _convert_="all")
    manifests = datamodule.prepare(out_dir=datamodule.data_dir)
    names = settings.test_sets or loaded.config["data"]["test_splits"]
    unknown = sorted(set(names) - set(manifests))
    if unknown:
        raise ValueError(f"export.test_sets names {unknown}; the corpus has {sorted(manifests)}")
    return {name: manifests[name] for name in names}


def _build_package(
    loaded: LoadedCheckpoint, settings: ExportSettings, window: WindowSpec, staging: Path
) -> Path:
    ane_model = build_ane_model(
        loaded.model,
        prenormalizer=settings.prenormalizer,
        softmax_rescale=settings.softmax_rescale,
        window_frames=window.window_frames,
    )
    return convert_to_coreml(
        ane_model,
        window_frames=window.window_frames,
        n_mels=loaded.features.n_mels,
        out_path=staging / PACKAGE_DIR,
    )


def _check_parity(
    loaded: LoadedCheckpoint, settings: ExportSettings, staging: Path, progress: Progress
) -> tuple[dict[str, dict], dict[str, int]]:
    """Per-test-set parity results and the program's op histogram."""
    bundle = load_bundle(staging)  # read back as any user of the directory will read it
    executor = PackageExecutor(bundle.package, mode=settings.executor)
    run_fp32_window = torch_window_runner(loaded.model)
    recognizers = Recognizers(
        fp32=lambda features: whole_utterance_logits(loaded.model, features),
        fp32_windowed=lambda features: windowed_logits(features, run_fp32_window, bundle.window),
        fp16=executor_logits(bundle, executor),
        coreml=coreml_logits(bundle) if COREML_AVAILABLE else None,
    )
    results = {}
    for name, manifest in _test_manifests(loaded, settings).items():
        cuts = load_cuts(manifest)
        if settings.max_utterances is not None:
            cuts = cuts.subset(first=min(settings.max_utterances, len(cuts)))
        task = progress.add_task(f"parity on {name}", total=len(cuts))
        executor.reset_stats()
        result = measure_test_set(
            featurised_utterances(cuts, loaded.features),
            recognizers,
            bundle.tokenizer,
            on_utterance=lambda task=task: progress.advance(task),
        )
        result["nonfinite"] = executor.nonfinite_count
        result["nonfinite_by_op_type"] = dict(executor.nonfinite_by_op_type)
        result["first_nonfinite_op"] = executor.first_nonfinite_op
        results[name] = result
    return results, executor.op_histogram()


def _package_bytes(package: Path) -> int:
    return sum(f.stat().st_size for f in package.rglob("*") if f.is_file())


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to `out`, replacing what was there."""
    if out.exists():
        replaced = staging.with_name(staging.name.replace(".staging-", ".replaced-"))
        out.rename(replaced)
        staging.rename(out)
        shutil.rmtree(replaced)
    else:
        staging.rename(out)


def _reject(staging: Path, out: Path) -> Path:
    """Keep a failed export (report and package) in <out>.rejected/, replacing an older one."""
    rejected = out.with_name(out.name + REJECTED_SUFFIX)
    if rejected.exists():
        shutil.rmtree(rejected)
    staging.rename(rejected)
    return rejected


def wandb_summary(report: dict, directory: Path) -> dict:
    """The numbers an export adds to its training run's W&B summary."""
    summary = {
        "export/passed": report["passed"],
        "export/package_bytes": report["package_bytes"],
        "export/executor": report["executor"],
        "export/prenormalizer": report["prenormalizer"],
        "export/softmax_rescale": report["softmax_rescale"],
        "export/window_seconds": report["window"]["seconds"],
        "export/export_seconds": report["export_seconds"],
        "export/directory": str(directory),
    }
    for name, result in report["test_sets"].items():
        for key in ("wer_fp32", "wer_fp32_windowed", "wer_fp16", "identical", "nonfinite",
                    "logits_psnr_db"):
            summary[f"export/{name}/{key}"] = result[key]
    return summary


def update_wandb_run(loaded: LoadedCheckpoint, summary: dict) -> str | None:
    """Add `summary` to the checkpoint's training run in W&B; returns the run id, if any.

    Resumes the run by the id the training run directory recorded. Offline (written under the
    run directory, for `wandb sync`) unless the training config logged online and an API key
    is set: W&B without a reachable server stalls for minutes, and export must never block.
    """
    run_id = loaded.wandb_run_id
    if run_id is None or os.environ.get("WANDB_MODE") == "disabled":
        return None
    import wandb

    logger_cfg = loaded.config.get("logger") or {}
    online = bool(logger_cfg.get("online")) and bool(os.environ.get("WANDB_API_KEY"))
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        run = wandb.init(
            id=run_id,
            resume="allow",
            dir=str(loaded.run_dir),
            project=logger_cfg.get("project", "edge-conformer"),
            entity=logger_cfg.get("entity"),
            mode="online" if online else "offline",
        )
        run.summary.update(summary)
        wandb.finish()
    except Exception as error:  # the export's result stands whatever W&B does
        log.warning("could not update W&B run %s: %s", run_id, error)
        return None
    return run_id


@contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """A hidden sibling of `out` to build the export in, removed if the build fails.

    A sibling, so that publishing is one rename on the same file system; not mkdtemp, whose
    0700 mode the published directory would keep.
    """
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}-{secrets.token_hex(3)}")
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
        raise


def _report(
    loaded: LoadedCheckpoint, settings: ExportSettings, window: WindowSpec, package: Path,
    test_sets: dict[str, dict], ops: dict[str, int],
) -> dict:
    """parity.json: the gate's verdict and reasons, per-set results, settings, package facts."""
    reasons = gate_failures(
        test_sets, ParityThresholds(settings.min_identical, settings.max_wer_delta)
    )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "checkpoint": str(loaded.path),
        "variant": {key: loaded.config["model"][key]
                    for key in ("name", "subsampling", "norm", "d_model", "num_layers")},
        "executor": settings.executor,
        "prenormalizer": settings.prenormalizer,
        "softmax_rescale": settings.softmax_rescale,
        "thresholds": {"min_identical": settings.min_identical,
                       "max_wer_delta": settings.max_wer_delta},
        "window": window.describe(frames_per_second(loaded)),
        "coreml_runtime": "run" if COREML_AVAILABLE else COREML_UNAVAILABLE_NOTE,
        "package_bytes": _package_bytes(package),
        "test_sets": test_sets,
        "ops": ops,
    }


def frames_per_second(loaded: LoadedCheckpoint) -> float:
    return loaded.features.sample_rate / loaded.features.hop_length


def export_checkpoint(
    ckpt: str | Path, out: str | Path, settings: ExportSettings, console: Console | None = None
) -> ExportOutcome:
    """Export a checkpoint (or a run directory's) into `out`, if and only if parity passes."""
    started = time.perf_counter()
    out = Path(out).resolve()
    with _staging_dir(out) as staging, _progress(console or Console(stderr=True)) as progress:
        step = progress.add_task("loading checkpoint", total=None)
        loaded = load_checkpoint(ckpt, tokenizer_dir=staging)
        window = WindowSpec.from_seconds(
            settings.window_seconds, settings.overlap_seconds, frames_per_second(loaded)
        )
        progress.update(step, description="converting to an FP16 Core ML package")
        package = _build_package(loaded, settings, window, staging)
        convert_seconds = time.perf_counter() - started
        features = feature_settings(loaded.config["data"]["features"])
        write_frontend(staging, frontend_description(features, window, loaded.tokenizer.vocab_size))
        progress.update(step, description="package written", total=1, completed=1)
        test_sets, ops = _check_parity(loaded, settings, staging, progress)

        report = _report(loaded, settings, window, package, test_sets, ops)
        report["convert_seconds"] = round(convert_seconds, 2)  # checkpoint to package
        report["export_seconds"] = round(time.perf_counter() - started, 2)  # parity included
        (staging / PARITY_JSON).write_text(json.dumps(report, indent=2) + "\n")
        (staging / PARITY_MD).write_text(parity_markdown(report))

    if report["passed"]:
        _publish(staging, out)
        directory = out
    else:
        directory = _reject(staging, out)
    if settings.wandb:
        update_wandb_run(loaded, wandb_summary(report, directory))
    return ExportOutcome(passed=report["passed"], directory=directory, report=report)


def parity_table(report: dict) -> Table:
    verdict = "[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]"
    table = Table(
        title=f"Export parity {verdict} (executor {report['executor']})",
        caption=f"Core ML runtime: {report['coreml_runtime']}",
    )
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column == "test set" else "right")
    for row in parity_rows(report):
        table.add_row(*row)
    return table
