"""checkpoint -> Neural Engine graphs -> FP16 .mlpackages -> WER parity gates -> published export.

Two packages from one checkpoint: model.mlpackage (a fixed window, always) and, when the model
streams (export.streaming, see stream_checks.py), stream.mlpackage (a fixed chunk with explicit
caches). Each is gated on its own (the parity ladder's last step for streaming: the package
chunk by chunk against the FP32 chunk loop), and both must pass for anything to be published.

`export_checkpoint` builds the whole export directory (see bundle.py) in a hidden staging
directory beside the target, and renames it into place only when parity passes: a failed
export never publishes a package, and never touches a directory already there. Its report is
kept in <out>.rejected/ for the user to read. Only an earlier export is ever replaced; any
other directory at `out` is refused before the checkpoint is loaded (see publish.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from hydra.utils import instantiate
from lhotse import CutSet
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from edge_conformer.config.schemas import ExportSettings
from edge_conformer.data.manifests import load_cuts
from edge_conformer.export.convert import convert_stream_to_coreml, convert_to_coreml
from edge_conformer.export.graph import build_ane_model
from edge_conformer.export.parity import (
    STREAMING,
    Recognizers,
    featurised_utterances,
    judge,
    measure_test_set,
    parity_markdown,
    parity_rows,
    report_sections,
    section_title,
    table_columns,
)
from edge_conformer.export.publish import check_publishable, publish, reject, staging_dir
from edge_conformer.export.stream_checks import streaming_context
from edge_conformer.export.stream_graph import build_stream_model
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.model.streaming import ChunkContext, stream_logits
from edge_conformer.records import PARITY_JSON, ExportReport, ParityThresholds, SetParity
from edge_conformer.runtime.bundle import (
    COREML_AVAILABLE,
    COREML_UNAVAILABLE_NOTE,
    PACKAGE_DIR,
    PARITY_MD,
    Bundle,
    coreml_logits,
    coreml_predict,
    executor_logits,
    frontend_description,
    load_bundle,
    write_frontend,
)
from edge_conformer.runtime.checkpoint import LoadedCheckpoint, load_checkpoint
from edge_conformer.runtime.stream_package import (
    STREAM_PACKAGE_DIR,
    StreamPackage,
    stream_description,
    stream_package_logits,
)
from edge_conformer.runtime.windowing import (
    WindowSpec,
    torch_window_runner,
    whole_utterance_logits,
    windowed_logits,
)
from edge_conformer.wandb_mode import wandb_online

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ExportOutcome:
    directory: Path  # the published export, or <out>.rejected/ when parity failed
    report: ExportReport  # what its parity.json holds

    @property
    def passed(self) -> bool:
        return self.report.passed


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _test_cuts(loaded: LoadedCheckpoint, settings: ExportSettings) -> dict[str, CutSet]:
    """The test sets to check (export.test_sets, export.max_utterances), from the training
    recipe's own preparer.

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
    test_sets = {}
    for name in names:
        cuts = load_cuts(manifests[name])
        if settings.max_utterances is not None:
            cuts = cuts.subset(first=min(settings.max_utterances, len(cuts)))
        test_sets[name] = cuts
    return test_sets


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


def _build_stream_package(
    loaded: LoadedCheckpoint, settings: ExportSettings, context: ChunkContext, staging: Path
) -> dict:
    """Write stream.mlpackage; returns frontend.json's streaming section for it."""
    stream_model = build_stream_model(
        loaded.model, context,
        prenormalizer=settings.prenormalizer, softmax_rescale=settings.softmax_rescale,
    )
    convert_stream_to_coreml(stream_model, staging / STREAM_PACKAGE_DIR)
    return stream_description(loaded.model, context, loaded.features)


def _measure(
    test_sets: dict[str, CutSet], loaded: LoadedCheckpoint, bundle: Bundle,
    recognizers: Recognizers, executor: PackageExecutor, label: str, progress: Progress,
) -> dict[str, SetParity]:
    """Per-test-set parity of one package (`recognizers`; `executor` runs its FP16 way)."""
    results = {}
    for name, cuts in test_sets.items():
        task = progress.add_task(f"{label} parity on {name}", total=len(cuts))
        results[name] = measure_test_set(
            featurised_utterances(cuts, loaded.features),
            recognizers,
            bundle.tokenizer,
            fp16_counter=executor,
            on_utterance=lambda task=task: progress.advance(task),
        )
    return results


def _check_parity(
    loaded: LoadedCheckpoint, settings: ExportSettings, bundle: Bundle,
    test_sets: dict[str, CutSet], progress: Progress,
) -> tuple[dict[str, SetParity], dict[str, int]]:
    """The windowed package's per-test-set parity results and its program's op histogram."""
    executor = PackageExecutor(bundle.package, mode=settings.executor)
    run_fp32_window = torch_window_runner(loaded.model)
    recognizers = Recognizers(
        fp32=lambda features: whole_utterance_logits(loaded.model, features),
        fp32_reference=lambda features: windowed_logits(features, run_fp32_window, bundle.window),
        fp16=executor_logits(bundle, executor),
        coreml=coreml_logits(bundle) if COREML_AVAILABLE else None,
    )
    results = _measure(test_sets, loaded, bundle, recognizers, executor, "windowed", progress)
    return results, executor.op_histogram()


def _check_stream_parity(
    loaded: LoadedCheckpoint, settings: ExportSettings, bundle: Bundle,
    test_sets: dict[str, CutSet], progress: Progress,
) -> dict[str, SetParity]:
    """Parity ladder step 4: the streaming package in the gate's executor mode, chunk by chunk
    from zero caches, against the FP32 chunk loop at the same context."""
    description = bundle.streaming
    context = ChunkContext(description["chunk_frames"], description["left_frames"])
    stream_package = bundle.directory / description["package"]
    executor = PackageExecutor(stream_package, mode=settings.executor)
    coreml = None
    if COREML_AVAILABLE:
        coreml = partial(stream_package_logits,
                         StreamPackage(coreml_predict(stream_package), description))
    recognizers = Recognizers(
        fp32=lambda features: whole_utterance_logits(loaded.model, features),
        fp32_reference=lambda features: stream_logits(loaded.model, features, context),
        fp16=partial(stream_package_logits,
                     StreamPackage(lambda inputs: executor(**inputs), description)),
        coreml=coreml,
    )
    return _measure(test_sets, loaded, bundle, recognizers, executor, "streaming", progress)


def _package_bytes(package: Path) -> int:
    return sum(f.stat().st_size for f in package.rglob("*") if f.is_file())


STREAM_PACKAGE_FACTS = ("chunk_frames", "left_frames", "chunk_seconds", "left_seconds",
                        "algorithmic_latency_seconds")  # from frontend.json into parity.json


def _with_streaming(report: ExportReport, bundle: Bundle, test_sets: dict[str, SetParity]
                    ) -> ExportReport:
    """`report` with the streaming package's section, judged by the same thresholds."""
    description = bundle.streaming
    facts = {key: description[key] for key in STREAM_PACKAGE_FACTS}
    facts["bytes"] = _package_bytes(bundle.directory / description["package"])
    return replace(report, streaming=judge(test_sets, report.thresholds, STREAMING),
                   stream_package=facts)


WANDB_SET_FIELDS = ("wer_fp32", "wer_fp32_windowed", "wer_fp16", "identical", "nonfinite",
                    "logits_psnr_db")  # the SetParity fields an export adds to W&B, per set


def wandb_summary(report: ExportReport, directory: Path) -> dict:
    """The numbers an export adds to its training run's W&B summary; the streaming package's
    under export/stream/ (its `wer_fp32_windowed` is the FP32 chunk loop's WER)."""
    summary = {
        "export/passed": report.passed,
        "export/package_bytes": report.package_bytes,
        "export/executor": report.executor,
        "export/prenormalizer": report.prenormalizer,
        "export/softmax_rescale": report.softmax_rescale,
        "export/window_seconds": report.window["seconds"],
        "export/export_seconds": report.export_seconds,
        "export/directory": str(directory),
    }
    for name, result in report.windowed.test_sets.items():
        for key in WANDB_SET_FIELDS:
            summary[f"export/{name}/{key}"] = getattr(result, key)
    if report.streaming is not None:  # the same numbers under export/stream/
        summary["export/stream/passed"] = report.streaming.passed
        for key, value in (report.stream_package or {}).items():
            summary[f"export/stream/{key}"] = value
        for name, result in report.streaming.test_sets.items():
            for key in WANDB_SET_FIELDS:
                summary[f"export/stream/{name}/{key}"] = getattr(result, key)
    return summary


def update_wandb_run(loaded: LoadedCheckpoint, summary: dict) -> str | None:
    """Add `summary` to the checkpoint's training run in W&B; returns the run id, if any.

    Resumes the run by the id the training run directory recorded. Offline (written under the
    run directory, for `wandb sync`) unless the training config logged online and
    `wandb_online` agrees, as it did for training.
    """
    run_id = loaded.wandb_run_id
    if run_id is None or os.environ.get("WANDB_MODE") == "disabled":
        return None
    import wandb

    logger_cfg = loaded.config.get("logger") or {}
    online = wandb_online(bool(logger_cfg.get("online")))
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


def _report(
    loaded: LoadedCheckpoint, settings: ExportSettings, window: WindowSpec, package: Path,
    test_sets: dict[str, SetParity], ops: dict[str, int], convert_seconds: float,
    export_seconds: float,
) -> ExportReport:
    """parity.json: the gate's verdict and reasons, per-set results, settings, package facts."""
    thresholds = ParityThresholds(settings.min_identical, settings.max_wer_delta)
    return ExportReport(
        windowed=judge(test_sets, thresholds),
        checkpoint=str(loaded.path),
        variant={key: loaded.config["model"][key]
                 for key in ("name", "subsampling", "norm", "d_model", "num_layers")},
        executor=settings.executor,
        prenormalizer=settings.prenormalizer,
        softmax_rescale=settings.softmax_rescale,
        thresholds=thresholds,
        window=window.describe(loaded.features.settings.frames_per_second),
        coreml_runtime="run" if COREML_AVAILABLE else COREML_UNAVAILABLE_NOTE,
        package_bytes=_package_bytes(package),
        convert_seconds=round(convert_seconds, 2),  # checkpoint to package(s)
        export_seconds=round(export_seconds, 2),  # parity included
        ops=ops,
    )


def export_checkpoint(
    ckpt: str | Path, out: str | Path, settings: ExportSettings, console: Console | None = None
) -> ExportOutcome:
    """Export a checkpoint (or a run directory's) into `out`, if and only if parity passes."""
    started = time.perf_counter()
    out = check_publishable(out)  # before any work: a refused export costs nothing
    with staging_dir(out) as staging, _progress(console or Console(stderr=True)) as progress:
        step = progress.add_task("loading checkpoint", total=None)
        loaded = load_checkpoint(ckpt, tokenizer_dir=staging)
        # Refused here, before the minutes of conversion, if the model cannot stream.
        context = streaming_context(settings.streaming, loaded.config, loaded.path)
        window = WindowSpec.from_seconds(
            settings.window_seconds, settings.overlap_seconds,
            loaded.features.settings.frames_per_second,
        )
        progress.update(step, description="converting to an FP16 Core ML package")
        package = _build_package(loaded, settings, window, staging)
        frontend = frontend_description(loaded.features, window, loaded.tokenizer.vocab_size)
        if context is not None:
            progress.update(step, description="converting the streaming package")
            frontend["streaming"] = _build_stream_package(loaded, settings, context, staging)
        convert_seconds = time.perf_counter() - started
        write_frontend(staging, frontend)
        progress.update(step, description="packages written", total=1, completed=1)

        bundle = load_bundle(staging)  # read back as any user of the directory will read it
        test_sets = _test_cuts(loaded, settings)
        windowed, ops = _check_parity(loaded, settings, bundle, test_sets, progress)
        streaming = (_check_stream_parity(loaded, settings, bundle, test_sets, progress)
                     if context is not None else None)
        report = _report(loaded, settings, window, package, windowed, ops, convert_seconds,
                         export_seconds=time.perf_counter() - started)
        if streaming is not None:
            report = _with_streaming(report, bundle, streaming)
        report.write(staging / PARITY_JSON)
        (staging / PARITY_MD).write_text(parity_markdown(report))

    directory = publish_if_passed(staging, out, report)
    if settings.wandb:
        update_wandb_run(loaded, wandb_summary(report, directory))
    return ExportOutcome(directory=directory, report=report)


def publish_if_passed(staging: Path, out: Path, report: ExportReport) -> Path:
    """Publish the export built in `staging` as `out` if every parity section passed, else
    keep it in <out>.rejected/; returns where it went."""
    return publish(staging, out) if report.passed else reject(staging, out)


def parity_tables(report: ExportReport) -> Group:
    """The console's report: one table per package (windowed, then streaming), rows by test
    set, the columns of parity.md."""
    verdict = "[green]PASSED[/green]" if report.passed else "[red]FAILED[/red]"
    tables = []
    for labels, section in report_sections(report):
        # No outer border: the streaming table's columns then fit 120 columns unwrapped.
        table = Table(title=section_title(labels, section, report), title_justify="left",
                      show_edge=False)
        for column in table_columns(labels):
            table.add_column(column, justify="left" if column == "test set" else "right")
        for row in parity_rows(section):
            table.add_row(*row)
        tables.append(table)
    tables[-1].caption = f"Core ML runtime: {report.coreml_runtime}"
    return Group(f"Export parity {verdict} (executor {report.executor}; WER in %)", *tables)
