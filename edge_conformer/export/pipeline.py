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

export.compress (compress.py) has each package gated at compressed levels: one, or (auto) in
turn from the smallest until one passes, every level judged against the same FP32 references,
decoded once. The export holds the level that passed, else (auto) the FP16 package.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from edge_conformer.config.schemas import DecodeSettings, ExportSettings
from edge_conformer.data.manifests import load_cuts
from edge_conformer.decode.beam import Decoder, beam_decoder
from edge_conformer.export.compress import (
    AUTO,
    NONE,
    compress_package,
    levels_to_try,
    package_bytes,
)
from edge_conformer.export.convert import convert_stream_to_coreml, convert_to_coreml
from edge_conformer.export.graph import build_ane_model
from edge_conformer.export.parity import (
    COMPRESSION_COLUMNS,
    STREAMING,
    WINDOWED,
    PackageRecognizers,
    ReferenceRecognizers,
    ReferenceUtterance,
    SectionLabels,
    compression_notes,
    compression_rows,
    decode_references,
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
from edge_conformer.export.workers import usable_workers
from edge_conformer.mil.executor import PackageExecutor
from edge_conformer.model.streaming import ChunkContext, stream_logits
from edge_conformer.records import (
    PARITY_JSON,
    CompressionTrial,
    ExportReport,
    ParitySection,
    ParityThresholds,
)
from edge_conformer.runtime.bundle import (
    COREML_AVAILABLE,
    COREML_UNAVAILABLE_NOTE,
    PACKAGE_DIR,
    PARITY_MD,
    Bundle,
    coreml_logits,
    coreml_predict,
    executor_batch_logits,
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
    stream_package_logits_of,
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
    if settings.test_sets:
        names = settings.test_sets
        unknown = sorted(set(names) - set(manifests))
        if unknown:
            raise ValueError(
                f"export.test_sets names {unknown}; the corpus has {sorted(manifests)}")
    else:
        # The recipe's test sets that were prepared: the digits recipe's new_voices needs a
        # speech synthesiser and is skipped (with a log line) where none is installed.
        names = [n for n in loaded.config["data"]["test_splits"] if n in manifests]
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


@dataclass(frozen=True)
class _GatedPackage:
    """One package of the export as the gate runs it: window by window or chunk by chunk."""

    file: str  # its name in the export directory
    labels: SectionLabels
    references: ReferenceRecognizers
    # The package's ways of decoding, given the directory that holds it (the export's, or a
    # compression level's) and the FP16 executor that runs it there.
    recognizers: Callable[[Path, PackageExecutor], PackageRecognizers]


def _windowed_package(loaded: LoadedCheckpoint, bundle: Bundle) -> _GatedPackage:
    run_fp32_window = torch_window_runner(loaded.model)

    def recognizers(directory: Path, executor: PackageExecutor) -> PackageRecognizers:
        candidate = replace(bundle, directory=directory)
        return PackageRecognizers(
            fp16=executor_batch_logits(candidate, executor),
            coreml=coreml_logits(candidate) if COREML_AVAILABLE else None,
        )

    references = ReferenceRecognizers(
        fp32=partial(whole_utterance_logits, loaded.model),
        fp32_reference=lambda features: windowed_logits(features, run_fp32_window, bundle.window),
    )
    return _GatedPackage(PACKAGE_DIR, WINDOWED, references, recognizers)


def _streaming_package(loaded: LoadedCheckpoint, bundle: Bundle) -> _GatedPackage:
    """Parity ladder step 4: the streaming package in the gate's executor mode, chunk by chunk
    from zero caches, against the FP32 chunk loop at the same context."""
    description = bundle.streaming
    context = ChunkContext(description["chunk_frames"], description["left_frames"])

    def recognizers(directory: Path, executor: PackageExecutor) -> PackageRecognizers:
        coreml = None
        if COREML_AVAILABLE:
            predict = coreml_predict(directory / description["package"])
            coreml = partial(stream_package_logits, StreamPackage(predict, description))
        fp16 = StreamPackage(lambda inputs: executor(**inputs), description)
        return PackageRecognizers(fp16=partial(stream_package_logits_of, fp16), coreml=coreml)

    references = ReferenceRecognizers(
        fp32=partial(whole_utterance_logits, loaded.model),
        fp32_reference=lambda features: stream_logits(loaded.model, features, context),
    )
    return _GatedPackage(description["package"], STREAMING, references, recognizers)


@dataclass(frozen=True)
class _GatedLevel:
    """One compression level of one package through the gate."""

    level: str
    directory: Path  # holds the package at this level
    bytes: int
    section: ParitySection
    ops: dict[str, int]  # its program's op histogram


@dataclass(frozen=True)
class _Gate:
    """The parity gate of one export: its test sets and settings, and where packages lie."""

    loaded: LoadedCheckpoint
    settings: ExportSettings
    bundle: Bundle  # the export being staged: every package in it is FP16 as converted
    test_sets: dict[str, CutSet]
    candidates: Path  # a scratch directory for the compressed levels
    progress: Progress
    beam: Decoder | None  # reported beside greedy (decode.*), not gated; None: greedy only

    @property
    def workers(self) -> int:
        """The processes that run the FP16 executor (export.workers; export/workers.py)."""
        return usable_workers(self.settings.workers)

    def choose(self, package: _GatedPackage) -> tuple[_GatedLevel, tuple[CompressionTrial, ...]]:
        """Gate `package` at the levels export.compress names, the smallest first, and leave
        the one to publish in the export: the first that passed, else (auto) the FP16 one,
        else the one that failed. Returns it, and every level tried (empty when
        export.compress is none)."""
        compress = self.settings.compress
        levels = levels_to_try(compress)
        fp16_bytes = package_bytes(self.bundle.directory / package.file)
        # Kept in memory only when several levels will be judged against them.
        references = self._references(package, keep=compress == AUTO)
        tried: list[_GatedLevel] = []
        for level in levels:
            tried.append(self._gate_level(package, level, references))
            if tried[-1].section.passed:
                break  # the levels left are larger
        if tried[-1].section.passed:
            chosen = tried[-1]
        elif compress == AUTO:
            chosen = self._gate_level(package, NONE, references)
            tried.append(chosen)
        else:
            chosen = tried[-1]
        published = self.bundle.directory / package.file
        if chosen.directory != self.bundle.directory:
            shutil.rmtree(published)
            shutil.move(chosen.directory / package.file, published)
        if compress == NONE:
            return chosen, ()
        return chosen, tuple(
            CompressionTrial(package=package.file, level=gated.level, bytes=gated.bytes,
                             fp16_bytes=fp16_bytes, section=gated.section,
                             published=gated is chosen)
            for gated in tried
        )

    def _references(self, package: _GatedPackage, keep: bool
                    ) -> dict[str, Iterable[ReferenceUtterance]]:
        references: dict[str, Iterable[ReferenceUtterance]] = {}
        for name, cuts in self.test_sets.items():
            utterances = featurised_utterances(cuts, self.loaded.features)
            decoded = decode_references(utterances, package.references, self.bundle.tokenizer,
                                        self.beam)
            if keep:
                task = self.progress.add_task(f"FP32 references on {name}", total=len(cuts))
                decoded = [*self._advancing(decoded, task)]
            references[name] = decoded
        return references

    def _advancing(self, items: Iterable[ReferenceUtterance], task: TaskID
                   ) -> Iterator[ReferenceUtterance]:
        for item in items:
            yield item
            self.progress.advance(task)

    def _gate_level(self, package: _GatedPackage, level: str,
                    references: dict[str, Iterable[ReferenceUtterance]]) -> _GatedLevel:
        """`package` at `level` (none: the FP16 one in the export) through the gate."""
        directory = self.bundle.directory
        if level != NONE:
            directory = self.candidates / level
            task = self.progress.add_task(f"compressing {package.file}: {level}", total=None)
            compress_package(self.bundle.directory / package.file, level,
                             directory / package.file)
            self.progress.update(task, total=1, completed=1)
        executor = PackageExecutor(directory / package.file, mode=self.settings.executor)
        recognizers = package.recognizers(directory, executor)
        results = {}
        for name, utterances in references.items():
            task = self.progress.add_task(f"{package.file} ({level}) parity on {name}",
                                          total=len(self.test_sets[name]))
            results[name] = measure_test_set(
                utterances, recognizers, self.bundle.tokenizer, fp16_counter=executor,
                beam=self.beam, workers=self.workers, advance=partial(self.progress.advance, task),
            )
        thresholds = _thresholds(self.settings)
        return _GatedLevel(level, directory, package_bytes(directory / package.file),
                           judge(results, thresholds, package.labels), executor.op_histogram())


def _thresholds(settings: ExportSettings) -> ParityThresholds:
    return ParityThresholds(settings.min_identical, settings.max_wer_delta, settings.count_ties)


STREAM_PACKAGE_FACTS = ("chunk_frames", "left_frames", "chunk_seconds", "left_seconds",
                        "algorithmic_latency_seconds")  # from frontend.json into parity.json


def _with_streaming(report: ExportReport, bundle: Bundle, streaming: _GatedLevel
                    ) -> ExportReport:
    """`report` with the streaming package's section (judged by the same thresholds)."""
    facts = {key: bundle.streaming[key] for key in STREAM_PACKAGE_FACTS}
    facts["bytes"] = streaming.bytes
    facts["compression"] = streaming.level
    return replace(report, streaming=streaming.section, stream_package=facts)


WANDB_SET_FIELDS = ("wer_fp32", "wer_fp32_windowed", "wer_fp16", "identical", "nonfinite",
                    "logits_psnr_db")  # the SetParity fields an export adds to W&B, per set
WANDB_BEAM_FIELDS = ("wer_fp32_windowed_beam", "wer_fp16_beam")  # added when measured


def _sets_summary(prefix: str, section: ParitySection) -> dict:
    """W&B summary keys of `section`'s per-set numbers, under `prefix`."""
    return {
        f"{prefix}/{name}/{key}": getattr(result, key)
        for name, result in section.test_sets.items()
        for key in WANDB_SET_FIELDS + WANDB_BEAM_FIELDS
        if key in WANDB_SET_FIELDS or getattr(result, key) is not None
    }


def wandb_summary(report: ExportReport, directory: Path) -> dict:
    """The numbers an export adds to its training run's W&B summary; the streaming package's
    under export/stream/ (its `wer_fp32_windowed` is the FP32 chunk loop's WER)."""
    summary = {
        "export/passed": report.passed,
        "export/package_bytes": report.package_bytes,
        "export/compression": report.compression,
        "export/executor": report.executor,
        "export/prenormalizer": report.prenormalizer,
        "export/softmax_rescale": report.softmax_rescale,
        "export/window_seconds": report.window["seconds"],
        "export/export_seconds": report.export_seconds,
        "export/directory": str(directory),
        **_sets_summary("export", report.windowed),
    }
    if report.streaming is not None:  # the same numbers under export/stream/
        summary["export/stream/passed"] = report.streaming.passed
        for key, value in (report.stream_package or {}).items():
            summary[f"export/stream/{key}"] = value
        summary.update(_sets_summary("export/stream", report.streaming))
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
    loaded: LoadedCheckpoint, settings: ExportSettings, window: WindowSpec,
    windowed: _GatedLevel, convert_seconds: float, export_seconds: float,
) -> ExportReport:
    """parity.json: the gate's verdict and reasons, per-set results, settings, package facts."""
    return ExportReport(
        windowed=windowed.section,
        checkpoint=str(loaded.path),
        variant={key: loaded.config["model"][key]
                 for key in ("name", "subsampling", "norm", "d_model", "num_layers")},
        executor=settings.executor,
        prenormalizer=settings.prenormalizer,
        softmax_rescale=settings.softmax_rescale,
        thresholds=_thresholds(settings),
        window=window.describe(loaded.features.settings.frames_per_second),
        coreml_runtime="run" if COREML_AVAILABLE else COREML_UNAVAILABLE_NOTE,
        package_bytes=windowed.bytes,
        convert_seconds=round(convert_seconds, 2),  # checkpoint to package(s)
        export_seconds=round(export_seconds, 2),  # parity included
        ops=windowed.ops,
        compression=windowed.level,
    )


def export_checkpoint(
    ckpt: str | Path, out: str | Path, settings: ExportSettings, console: Console | None = None,
    decode: DecodeSettings | None = None,
) -> ExportOutcome:
    """Export a checkpoint (or a run directory's) into `out`, if and only if parity passes;
    with a beam size in `decode`, the report gives beam-search WERs beside greedy's."""
    started = time.perf_counter()
    out = check_publishable(out)  # before any work: a refused export costs nothing
    with staging_dir(out) as staging, _progress(console or Console(stderr=True)) as progress:
        step = progress.add_task("loading checkpoint", total=None)
        loaded = load_checkpoint(ckpt, tokenizer_dir=staging)
        # Refused here, before the minutes of conversion, if the model cannot stream.
        context = streaming_context(settings.streaming, loaded.config, loaded.path)
        # Likewise a lexicon or LM that cannot be used (UserInputError naming the file).
        beam = None
        if decode is not None and decode.beam_size is not None:
            beam = beam_decoder(decode, loaded.tokenizer)
        window = WindowSpec.from_seconds(
            settings.window_seconds, settings.overlap_seconds,
            loaded.features.settings.frames_per_second,
        )
        progress.update(step, description="converting to an FP16 Core ML package")
        _build_package(loaded, settings, window, staging)
        frontend = frontend_description(loaded.features, window, loaded.tokenizer.vocab_size)
        if context is not None:
            progress.update(step, description="converting the streaming package")
            frontend["streaming"] = _build_stream_package(loaded, settings, context, staging)
        convert_seconds = time.perf_counter() - started
        write_frontend(staging, frontend)
        progress.update(step, description="packages written", total=1, completed=1)

        bundle = load_bundle(staging)  # read back as any user of the directory will read it
        test_sets = _test_cuts(loaded, settings)
        with tempfile.TemporaryDirectory(dir=staging) as candidates:
            gate = _Gate(loaded, settings, bundle, test_sets, Path(candidates), progress, beam)
            windowed, trials = gate.choose(_windowed_package(loaded, bundle))
            if context is not None:
                streaming, stream_trials = gate.choose(_streaming_package(loaded, bundle))
                trials += stream_trials
        report = _report(loaded, settings, window, windowed, convert_seconds,
                         export_seconds=time.perf_counter() - started)
        if settings.compress != NONE:
            report = replace(report, compression_trials=trials)
        if beam is not None:
            report = replace(report, beam_decoder=beam.description)
        if context is not None:
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
        for column in table_columns(labels, section):
            table.add_column(column, justify="left" if column == "test set" else "right")
        for row in parity_rows(section):
            table.add_row(*row)
        tables.append(table)
    if report.compression_trials:
        tables.append(_compression_table(report))
    tables[-1].caption = "\n".join(
        [*compression_notes(report), f"Core ML runtime: {report.coreml_runtime}"])
    return Group(f"Export parity {verdict} (executor {report.executor}; WER in %)", *tables)


def _compression_table(report: ExportReport) -> Table:
    """Every compression level tried, with its size; the published one says so."""
    table = Table(title="Compression levels tried (export.compress)", title_justify="left",
                  caption_justify="left", show_edge=False)
    for column in COMPRESSION_COLUMNS:
        left = column in ("package", "level", "test set", "verdict")
        table.add_column(column, justify="left" if left else "right")
    for row in compression_rows(report):
        table.add_row(*row)
    return table
