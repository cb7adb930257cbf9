"""What crosses module boundaries: the files of a run directory and their typed records.

Training writes `results.json` (RunResults) into its run directory, export writes
`parity.json` (ExportReport) into its export directory; every writer and reader goes through
these records, and only this module knows their JSON form. A record's JSON object has one key
per field, named as the field, so a new measurement is one new field here; give it a default
and files written before it still read. An optional field (default None) is written only when
it holds a value, so records that never measure it keep their files' shape. No torch,
Lightning or coremltools: tools that compare runs import this on any machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from edge_conformer.errors import UserInputError, read_json

RUN_ID_FILE = "wandb_run_id.txt"  # a run's W&B id, written by training, read by export
RESULTS_JSON = "results.json"  # a training run's RunResults, in its run directory
PARITY_JSON = "parity.json"  # an export's ExportReport, in its export directory

R = TypeVar("R", bound="Record")


def read_run_id(run_dir: Path) -> str | None:
    """The W&B id of the run in `run_dir`; None when it did not log to W&B."""
    id_file = Path(run_dir) / RUN_ID_FILE
    return id_file.read_text().strip() if id_file.is_file() else None


class RecordError(ValueError):
    """A JSON value that is not the record it should be."""


class Record:
    """The JSON form every record shares, and reading and writing it as a file."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)
                if not (f.default is None and getattr(self, f.name) is None)}

    @classmethod
    def from_json(cls: type[R], data: Any) -> R:
        return _build(cls, data)

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        """The record held in `path`; a file that holds none raises UserInputError naming it."""
        data = read_json(path, cls.__name__)
        try:
            return cls.from_json(data)
        except RecordError as error:
            raise UserInputError(f"{path}: not a valid {cls.__name__} file: {error}") from None


def _json_value(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, Mapping):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return value


def _build(cls: type[R], data: Any, **convert: Callable[[Any], Any]) -> R:
    """`cls` from its JSON object; `convert` turns the JSON of named fields into their types.

    Fields with a default may be absent (files written before the field existed); keys the
    record does not know (files from a newer writer) are ignored.
    """
    if not isinstance(data, Mapping):
        raise RecordError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    known = [f for f in fields(cls) if f.init]
    missing = [f.name for f in known if f.name not in data
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise RecordError(f"{cls.__name__} lacks {', '.join(missing)}")
    return cls(**{f.name: convert.get(f.name, _unchanged)(data[f.name])
                  for f in known if f.name in data})


def _unchanged(value: Any) -> Any:
    return value


def _by_name(kind: type[R]) -> Callable[[Any], dict[str, R]]:
    """Converts a JSON object of `kind` records by name (test sets, in their order)."""
    def convert(data: Any) -> dict[str, R]:
        if not isinstance(data, Mapping):
            raise RecordError(f"{kind.__name__}s by name must be a JSON object")
        return {name: kind.from_json(item) for name, item in data.items()}
    return convert


def _optional(kind: type[R]) -> Callable[[Any], R | None]:
    return lambda data: None if data is None else kind.from_json(data)


# ---------------------------------------------------------------------------------------------
# results.json


@dataclass(frozen=True)
class ErrorRates(Record):
    """Greedy-decoding error rates of one test set, in percent."""

    wer: float
    cer: float
    utterances: int
    # The same under the deployed chunk context (model.streaming.eval_chunk/eval_left, masked
    # full forward); only for runs trained with model.streaming.enabled.
    wer_stream: float | None = None
    cer_stream: float | None = None


@dataclass(frozen=True)
class Variant(Record):
    """A run's model variant: the paper's ablation axes (conf/model)."""

    size: str
    subsampling: str
    norm: str

    def __str__(self) -> str:
        return f"{self.size}/{self.subsampling}/{self.norm}"


@dataclass(frozen=True)
class RunResults(Record):
    """results.json: what one training run measured (train.py writes it into its run dir)."""

    run_name: str
    run_dir: str
    variant: Variant
    parameters: int
    vocab_size: int
    train_steps: int
    train_wall_seconds: float  # accumulated over resumes
    train_audio_seconds: float  # audio trained on by all ranks together
    audio_seconds_per_second: float  # training throughput
    skipped_utterances: int  # bad data dropped by the DataModule
    checkpoint: str  # the tested checkpoint (conf/train.yaml test_checkpoint): last or best
    test: dict[str, ErrorRates]  # by test set, in the config's order
    wandb_run_id: str | None  # None when the run did not log to W&B

    @classmethod
    def from_json(cls, data: Any) -> RunResults:
        return _build(cls, data, variant=Variant.from_json, test=_by_name(ErrorRates))


# ---------------------------------------------------------------------------------------------
# parity.json (see export/parity.py for how each number is measured)


@dataclass(frozen=True)
class ParityThresholds(Record):
    """The parity gate (conf/export/default.yaml)."""

    min_identical: float  # share of utterances whose FP16 transcript equals FP32-windowed's
    max_wer_delta: float  # WER points FP16 may add over FP32-windowed
    # Whether an utterance that differs only at FP32 ties counts against min_identical
    # (export.count_ties). Reports written before the knob existed counted them: the default.
    count_ties: bool = True


@dataclass(frozen=True)
class Mismatch(Record):
    """An utterance whose FP16 transcript differs from FP32-windowed's."""

    id: str
    reference: str
    fp32: str
    fp32_windowed: str
    fp16: str
    # The largest FP32 top-two margin, in FP16 ulps, among the frames whose best token FP16
    # changed: at most TIE_ULPS (export/parity.py), every flip was an FP32 tie.
    fp32_margin_ulps: float
    coreml: str | None = None  # the real Core ML runtime's transcript (macOS only)


@dataclass(frozen=True)
class CoreMLParity(Record):
    """The package in the real Core ML runtime (macOS only), against FP32-windowed."""

    wer: float
    identical: float


@dataclass(frozen=True)
class SetParity(Record):
    """One test set through the parity gate: WERs in percent, FP16 against FP32-windowed.

    In the `streaming` section "windowed" reads "chunk by chunk": wer_fp32_windowed is the FP32
    chunk loop's WER, wer_fp16 the streaming package's, windowing_cost what chunks cost.
    """

    utterances: int
    wer_fp32: float  # the training graph on whole utterances
    wer_fp32_windowed: float  # the training graph window by window, stitched
    wer_fp16: float  # the package in the FP16 executor, windowed the same way
    windowing_cost: float  # wer_fp32_windowed - wer_fp32: reported, not gated
    identical: float  # share of utterances whose FP16 transcript equals FP32-windowed's
    tied_mismatches: int  # differing utterances whose every flipped frame was an FP32 tie
    logits_psnr_db: float | None  # None once the FP16 logits held a non-finite value
    mismatches: tuple[Mismatch, ...]  # the first few differing utterances
    nonfinite: int  # inf/NaN values the FP16 executor produced on this set
    nonfinite_by_op_type: dict[str, int]
    first_nonfinite_op: str | None  # where the first one appeared (a MIL op or input name)
    coreml: CoreMLParity | None = None
    # The same logits beam-searched (export.py's decode.*), reported beside greedy, not gated;
    # None when the export ran greedy only.
    wer_fp32_windowed_beam: float | None = None
    wer_fp16_beam: float | None = None

    @classmethod
    def from_json(cls, data: Any) -> SetParity:
        return _build(cls, data, coreml=_optional(CoreMLParity),
                      mismatches=lambda items: tuple(Mismatch.from_json(m) for m in items))


@dataclass(frozen=True)
class ParitySection(Record):
    """One parity gate over the test sets: per-set results, and why it failed if it did.

    Each package and the way it runs (model.mlpackage window by window, stream.mlpackage chunk
    by chunk) gets a section of its own, judged on its own.
    """

    reasons: tuple[str, ...]  # empty when every test set passed
    test_sets: dict[str, SetParity]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, **super().to_json()}

    @classmethod
    def from_json(cls, data: Any) -> ParitySection:  # `passed` follows from the reasons
        return _build(cls, data, reasons=tuple, test_sets=_by_name(SetParity))


@dataclass(frozen=True)
class CompressionTrial(Record):
    """One compression level of one package through the gate (export.compress)."""

    package: str  # the package's file name: model.mlpackage or stream.mlpackage
    level: str  # as export.compress names it; "none" is the FP16 package
    bytes: int  # the package at this level, on disk
    fp16_bytes: int  # the FP16 package it was compressed from
    section: ParitySection  # the gate's results and reasons at this level
    published: bool  # the level the export holds (if the export passed)

    @classmethod
    def from_json(cls, data: Any) -> CompressionTrial:
        return _build(cls, data, section=ParitySection.from_json)


@dataclass(frozen=True)
class ExportReport(Record):
    """parity.json: an export's verdict, per-set parity, its settings and package facts."""

    # The package run window by window: parity.json holds this section's reasons and test_sets
    # at its top level (the streaming section under its own key), and beside them `passed`,
    # the export's verdict over all its sections.
    windowed: ParitySection
    checkpoint: str
    variant: dict[str, Any]  # the model config's name, subsampling, norm, d_model, num_layers
    executor: str  # the FP16 executor mode that ran the package
    prenormalizer: str
    softmax_rescale: bool
    thresholds: ParityThresholds
    window: dict[str, float]  # as WindowSpec.describe gives it (frontend.json holds the same)
    coreml_runtime: str  # "run", or why the real runtime did not run
    package_bytes: int
    convert_seconds: float  # checkpoint to package(s)
    export_seconds: float  # the whole export, parity included
    ops: dict[str, int]  # op count per op type in the package's program
    # The streaming package (stream.mlpackage) run chunk by chunk, judged on its own; both
    # sections must pass for the export to be published. None: the export has no such package.
    streaming: ParitySection | None = None
    # Its geometry (as frontend.json's streaming section gives it), size in bytes and
    # compression level.
    stream_package: dict[str, Any] | None = None
    # model.mlpackage's weights: the export.compress level it holds ("none": FP16). None in
    # files written before compression existed, whose packages are all FP16.
    compression: str | None = None
    # Every level the gate tried, per package, in order; None when export.compress was none.
    compression_trials: tuple[CompressionTrial, ...] | None = None
    # The beam search behind the sets' *_beam WERs (Decoder.description); None: greedy only.
    beam_decoder: str | None = None

    @property
    def passed(self) -> bool:
        return self.windowed.passed and (self.streaming is None or self.streaming.passed)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the packages must not be published; empty when they passed."""
        streaming = self.streaming.reasons if self.streaming else ()
        return self.windowed.reasons + tuple(f"streaming {reason}" for reason in streaming)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        section = data.pop("windowed")
        return {**section, **data, "passed": self.passed}

    @classmethod
    def from_json(cls, data: Any) -> ExportReport:
        if not isinstance(data, Mapping):
            raise RecordError(f"ExportReport must be a JSON object, got {type(data).__name__}")
        return _build(cls, {**data, "windowed": data}, windowed=ParitySection.from_json,
                      thresholds=ParityThresholds.from_json,
                      streaming=_optional(ParitySection),
                      compression_trials=lambda items: None if items is None else tuple(
                          CompressionTrial.from_json(item) for item in items))
