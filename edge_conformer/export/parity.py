"""The WER parity gate: does the FP16 package recognise what the FP32 model recognises?

Every utterance of a test set is decoded (greedy CTC) four ways: two FP32 ways
(`ReferenceRecognizers`), decoded once per test set however many compression levels of a
package are then judged against them (`ReferenceUtterance`), and the package's ways
(`PackageRecognizers`):

- `fp32`: the training graph on the whole utterance, full context (what training reported);
- `fp32_reference`: the training graph run the way the package runs: window by window,
  stitched (windowing.py), or chunk by chunk from zero caches (model/streaming.py);
- `fp16`: the saved package, run by the FP16 executor the same way;
- `coreml` (macOS only): the package in the real Core ML runtime.

FP16 is judged against `fp32_reference`, which differs from it only in arithmetic; the cost of
windows or chunks is `fp32_reference` against `fp32`, reported but not gated. Given a beam
decoder (export.py's `decode.*`), the `fp32_reference` and `fp16` logits are also beam-searched
and their WERs reported beside greedy's; the gate judges greedy transcripts only. Each package of
an export (model.mlpackage by windows, stream.mlpackage by chunks) is measured by the same
`measure_test_set` into a section of its own, judged by the same thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from lhotse import CutSet

from edge_conformer.data.dataset import load_cut_audio
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.manifests import cut_text
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode import decode_logits, error_rates
from edge_conformer.decode.beam import Decoder, decode_text
from edge_conformer.export.compress import NONE
from edge_conformer.export.workers import NonfiniteCounter, NonfiniteTally, fp16_logits
from edge_conformer.numerics import FP16
from edge_conformer.records import (
    CompressionTrial,
    CoreMLParity,
    ExportReport,
    Mismatch,
    ParitySection,
    ParityThresholds,
    SetParity,
)
from edge_conformer.runtime.windowing import BatchLogitsFn, LogitsFn

MISMATCHES_KEPT = 10  # differing transcripts listed per test set in parity.json
# A frame is a numerical tie when FP32's two best logits lie within this many FP16 ulps (of the
# best logit): FP16 cannot order them reliably, however well the graph is protected. An
# utterance that differs only at ties does not count against min_identical (export.count_ties).
TIE_ULPS = 4
# The guards of ml-ane-transformers' compute_psnr (ane_transformers/testing_utils.py): 1e-5
# added to the peak, 1e-10 to the RMS error: equal outputs give a finite PSNR (200 dB plus
# 20 log10 of the peak), and an error far below 1e-5 is still measured, not swamped.
PSNR_PEAK_EPS = 1e-5
PSNR_ERROR_EPS = 1e-10


@dataclass(frozen=True)
class EvalUtterance:
    utt_id: str
    text: str
    features: torch.Tensor  # (frames, n_mels), as the host computes them for the package


@dataclass(frozen=True)
class ReferenceRecognizers:
    """The FP32 ways every utterance is decoded (see the module docstring)."""

    fp32: LogitsFn
    fp32_reference: LogitsFn


@dataclass(frozen=True)
class PackageRecognizers:
    """The package's ways: the FP16 executor, and the Core ML runtime where there is one."""

    fp16: BatchLogitsFn  # several utterances at once (the executor's batched calls)
    coreml: LogitsFn | None = None


@dataclass(frozen=True)
class ReferenceUtterance:
    """An utterance decoded the FP32 ways: what every package (level) is judged against."""

    utt_id: str
    text: str
    features: torch.Tensor
    logits: torch.Tensor  # fp32_reference's: the FP16 logits' PSNR and flips are against them
    fp32: str  # the transcripts of the two FP32 ways
    fp32_reference: str
    fp32_reference_beam: str | None  # fp32_reference's logits beam-searched; None: no beam


@dataclass(frozen=True)
class SectionLabels:
    """How reports name one section's package and its ways of decoding."""

    title: str
    reference: str  # the FP32 way its FP16 transcripts are judged against
    wer_columns: tuple[str, str, str]  # WER (%) of fp32, fp32_reference and fp16
    note: str  # what its table compares, for parity.md


WINDOWED = SectionLabels(
    "Windowed package (model.mlpackage)", "FP32 windowed",
    ("WER fp32", "WER fp32 windowed", "WER fp16"),
    "FP16 (the package, executed) is compared with the FP32 training graph run on the same "
    "windows; 'WER fp32' decodes whole utterances, so the cost of windowing is the difference "
    "of the first two WERs. 'identical': share of utterances whose FP16 transcript equals the "
    "FP32 windowed one; PSNR: FP16 logits against FP32 windowed.",
)
STREAMING = SectionLabels(
    "Streaming package (stream.mlpackage)", "FP32 streaming",
    ("WER fp32 full", "WER fp32 stream", "WER fp16 stream"),
    "FP16 (the streaming package, executed chunk by chunk from zero caches) is compared with "
    "the FP32 training graph's chunk loop at the same chunk and left context; 'WER fp32 full' "
    "decodes whole utterances at full context, so the cost of streaming is the difference of "
    "the first two WERs. 'identical' and PSNR: FP16 against FP32 streaming.",
)


def featurised_utterances(cuts: CutSet, features: LogMelFeatures) -> Iterator[EvalUtterance]:
    """The cuts' utterances in order, with features as the host computes them (no dither)."""
    for cut in cuts:
        waveform = load_cut_audio(cut, features.sample_rate)
        yield EvalUtterance(cut.id, cut_text(cut), features(waveform))


def decode_references(
    utterances: Iterable[EvalUtterance], recognizers: ReferenceRecognizers, tokenizer: Tokenizer,
    beam: Decoder | None = None,
) -> Iterator[ReferenceUtterance]:
    """The utterances decoded the FP32 ways, in order (lazily: keep them to reuse them), and
    by `beam` too if given."""
    for utt in utterances:
        logits = recognizers.fp32_reference(utt.features)
        yield ReferenceUtterance(
            utt.utt_id, utt.text, utt.features, logits,
            fp32=decode_logits(recognizers.fp32(utt.features), tokenizer),
            fp32_reference=decode_logits(logits, tokenizer),
            fp32_reference_beam=None if beam is None else decode_text(beam, logits, tokenizer),
        )


class PsnrMeter:
    """PSNR of test logits against reference logits, accumulated over a test set.

    20 log10((max |reference| + 1e-5) / (RMS(test - reference) + 1e-10)), Apple's definition
    for Neural Engine conversions (ml-ane-transformers), over every valid frame and class.
    Undefined (None) once the test logits held a non-finite value: the gate reports those
    separately.
    """

    def __init__(self) -> None:
        self.peak = 0.0
        self.squared_error = 0.0
        self.count = 0
        self.finite = True

    def add(self, reference: torch.Tensor, test: torch.Tensor) -> None:
        if not torch.isfinite(test).all():
            self.finite = False
        if not self.finite or not reference.numel():
            return
        self.peak = max(self.peak, float(reference.abs().max()))
        self.squared_error += float(((test.double() - reference.double()) ** 2).sum())
        self.count += reference.numel()

    @property
    def db(self) -> float | None:
        if not self.finite or not self.count:
            return None
        rms = math.sqrt(self.squared_error / self.count)
        return 20 * math.log10((self.peak + PSNR_PEAK_EPS) / (rms + PSNR_ERROR_EPS))


def flipped_margin_ulps(reference: torch.Tensor, test: torch.Tensor) -> float:
    """The largest top-two margin of `reference` logits, in FP16 ulps of its best logit, over
    the frames whose best class `test` changed (0 when none changed).

    At most TIE_ULPS: every flip was a tie FP32 itself barely decided, not a numerical defect.
    """
    flipped = reference.argmax(-1) != test.argmax(-1)
    if not flipped.any():
        return 0.0
    top2 = reference[flipped].topk(2, dim=-1).values
    return float(((top2[:, 0] - top2[:, 1]) / FP16.ulp(top2[:, 0])).max())


def _share_identical(hyps: list[str], reference_hyps: list[str]) -> float:
    if not hyps:
        return float("nan")
    return sum(h == r for h, r in zip(hyps, reference_hyps, strict=True)) / len(hyps)


def measure_test_set(
    utterances: Iterable[ReferenceUtterance],
    recognizers: PackageRecognizers,
    tokenizer: Tokenizer,
    fp16_counter: NonfiniteCounter,
    beam: Decoder | None = None,
    workers: int = 1,
    advance: Callable[[], object] = lambda: None,
) -> SetParity:
    """Decode every utterance the package's ways beside its FP32 references; WERs (percent),
    identical share, logits PSNR, and the non-finite values `fp16_counter` (the executor behind
    `recognizers.fp16`) saw meanwhile. With `beam` (the one the references were decoded
    with), the FP16 logits are beam-searched too, for the beam WERs. `workers` processes
    compute the FP16 logits (export/workers.py: the same results as one); `advance` is called
    once per utterance measured (a progress display).

    The record's `*_windowed` fields hold `fp32_reference`'s results, whichever way it runs.
    """
    tally = NonfiniteTally()
    refs: list[str] = []
    ways = ["fp32", "fp32_windowed", "fp16"] + (["coreml"] if recognizers.coreml else [])
    hyps: dict[str, list[str]] = {way: [] for way in ways}
    psnr = PsnrMeter()
    mismatches = []
    tied_mismatches = 0
    beam_hyps: dict[str, list[str]] = {"fp32_windowed": [], "fp16": []}
    for utt, fp16 in fp16_logits(utterances, recognizers.fp16, fp16_counter, tally, workers):
        psnr.add(utt.logits, fp16)
        if beam is not None:
            beam_hyps["fp32_windowed"].append(utt.fp32_reference_beam)
            beam_hyps["fp16"].append(decode_text(beam, fp16, tokenizer))
        transcripts = {
            "fp32": utt.fp32,
            "fp32_windowed": utt.fp32_reference,
            "fp16": decode_logits(fp16, tokenizer),
        }
        if recognizers.coreml is not None:
            transcripts["coreml"] = decode_logits(recognizers.coreml(utt.features), tokenizer)
        for way, transcript in transcripts.items():
            hyps[way].append(transcript)
        refs.append(utt.text)
        if transcripts["fp16"] != transcripts["fp32_windowed"]:
            margin_ulps = flipped_margin_ulps(utt.logits, fp16)
            tied_mismatches += margin_ulps <= TIE_ULPS
            if len(mismatches) < MISMATCHES_KEPT:
                mismatches.append(Mismatch(id=utt.utt_id, reference=utt.text, **transcripts,
                                           fp32_margin_ulps=round(margin_ulps, 2)))
        advance()

    wer = {way: error_rates(refs, way_hyps)["wer"] for way, way_hyps in hyps.items()}
    beam_wer = {way: None if beam is None else error_rates(refs, way_hyps)["wer"]
                for way, way_hyps in beam_hyps.items()}
    coreml = None
    if recognizers.coreml:
        coreml = CoreMLParity(
            wer=wer["coreml"], identical=_share_identical(hyps["coreml"], hyps["fp32_windowed"])
        )
    return SetParity(
        utterances=len(refs),
        wer_fp32=wer["fp32"],
        wer_fp32_windowed=wer["fp32_windowed"],
        wer_fp16=wer["fp16"],
        wer_fp32_windowed_beam=beam_wer["fp32_windowed"],
        wer_fp16_beam=beam_wer["fp16"],
        windowing_cost=wer["fp32_windowed"] - wer["fp32"],
        identical=_share_identical(hyps["fp16"], hyps["fp32_windowed"]),
        # The gate counts these as identical unless export.count_ties (see TIE_ULPS).
        tied_mismatches=tied_mismatches,
        logits_psnr_db=psnr.db,
        mismatches=tuple(mismatches),
        nonfinite=tally.count,
        nonfinite_by_op_type=tally.by_op_type,
        first_nonfinite_op=tally.first_op,
        coreml=coreml,
    )


def _judged_identical(result: SetParity, count_ties: bool) -> float:
    """The identical share the gate holds against min_identical: the utterances that differ
    only at FP32 ties (TIE_ULPS) count as identical unless `count_ties`."""
    if count_ties:
        return result.identical
    # In whole utterances: a share plus a count's share need not round to the exact share.
    same = round(result.identical * result.utterances) + result.tied_mismatches
    return same / result.utterances


def gate_failures(
    test_sets: Mapping[str, SetParity], thresholds: ParityThresholds,
    reference: str = WINDOWED.reference,
) -> list[str]:
    """Why the package must not be published; empty when every test set passes. `reference`
    names the FP32 way the section's FP16 transcripts are judged against."""
    reasons = []
    for name, result in test_sets.items():
        if not result.utterances:
            reasons.append(f"{name}: no utterances were decoded")
            continue
        if result.nonfinite:
            reasons.append(
                f"{name}: {result.nonfinite} non-finite values in FP16 execution "
                f"(first at op {result.first_nonfinite_op!r})"
            )
        identical = _judged_identical(result, thresholds.count_ties)
        if identical < thresholds.min_identical:
            differing = round((1 - result.identical) * result.utterances)
            ties = "counted: export.count_ties=true" if thresholds.count_ties else "not counted"
            reasons.append(
                f"{name}: identical transcripts {identical:.3f} "
                f"< min_identical {thresholds.min_identical} ({result.tied_mismatches} of "
                f"the {differing} differing utterances differ only at FP32 ties, {ties})"
            )
        wer_delta = result.wer_fp16 - result.wer_fp32_windowed
        if wer_delta > thresholds.max_wer_delta:
            reasons.append(
                f"{name}: FP16 WER {result.wer_fp16:.2f}% is {wer_delta:.2f} points above "
                f"{reference} {result.wer_fp32_windowed:.2f}% (max_wer_delta "
                f"{thresholds.max_wer_delta})"
            )
    return reasons


def judge(
    test_sets: Mapping[str, SetParity], thresholds: ParityThresholds,
    labels: SectionLabels = WINDOWED,
) -> ParitySection:
    """The gate's section of the report: the per-set results and why they fail, if they do."""
    reasons = gate_failures(test_sets, thresholds, labels.reference)
    return ParitySection(reasons=tuple(reasons), test_sets=dict(test_sets))


# ---------------------------------------------------------------------------------------------
# Reports: parity.md and the console tables share their columns and rows


BEAM_COLUMN = "WER beam (fp32 / fp16)"  # beside the greedy WERs, when the export ran a beam


def _has_beam(section: ParitySection) -> bool:
    return any(result.wer_fp16_beam is not None for result in section.test_sets.values())


def _has_coreml(section: ParitySection) -> bool:
    """Whether the real Core ML runtime ran (macOS); elsewhere the report's settings line and
    caption say why not, and the table keeps its width for the numbers."""
    return any(result.coreml is not None for result in section.test_sets.values())


def table_columns(labels: SectionLabels, section: ParitySection) -> tuple[str, ...]:
    beam = (BEAM_COLUMN,) if _has_beam(section) else ()
    coreml = ("Core ML",) if _has_coreml(section) else ()
    return ("test set", "utts", *labels.wer_columns, *beam, "identical", "non-finite",
            "PSNR dB", *coreml)


def _coreml_cell(result: SetParity) -> str:
    if result.coreml is None:
        return "not run"
    return f"WER {result.coreml.wer:.2f}%, identical {result.coreml.identical:.3f}"


def _psnr_cell(result: SetParity) -> str:
    psnr = result.logits_psnr_db
    return "n/a (non-finite)" if psnr is None else f"{psnr:.1f}"


def parity_rows(section: ParitySection) -> list[tuple[str, ...]]:
    """One row of `table_columns` per test set."""
    rows = []
    beam, coreml = _has_beam(section), _has_coreml(section)
    for name, result in section.test_sets.items():
        rows.append((
            name,
            str(result.utterances),
            f"{result.wer_fp32:.2f}",
            f"{result.wer_fp32_windowed:.2f}",
            f"{result.wer_fp16:.2f}",
            *((f"{result.wer_fp32_windowed_beam:.2f} / {result.wer_fp16_beam:.2f}",)
              if beam else ()),
            f"{result.identical:.3f}",
            str(result.nonfinite),
            _psnr_cell(result),
            *((_coreml_cell(result),) if coreml else ()),
        ))
    return rows


# The compression table: every level export.compress had the gate try, per package ("model",
# "stream"). "WER fp32" is the FP32 way the package is judged against (windowed, or its chunk
# loop), "WER" the package's at that level; "kept": the level the export holds (published
# if every package of the export passed).
COMPRESSION_COLUMNS = ("package", "level", "MB", "of FP16", "test set", "WER fp32", "WER",
                       "identical", "PSNR dB", "verdict")


def _verdict(trial: CompressionTrial) -> str:
    verdict = "passed" if trial.section.passed else "failed"
    return f"{verdict}, kept" if trial.published else verdict


def compression_rows(report: ExportReport) -> list[tuple[str, ...]]:
    """One row of COMPRESSION_COLUMNS per level tried and test set."""
    return [
        (Path(trial.package).stem, trial.level, f"{trial.bytes / 1e6:.2f}",
         f"{trial.bytes / trial.fp16_bytes:.0%}", name, f"{result.wer_fp32_windowed:.2f}",
         f"{result.wer_fp16:.2f}", f"{result.identical:.3f}", _psnr_cell(result),
         _verdict(trial))
        for trial in report.compression_trials or ()
        for name, result in trial.section.test_sets.items()
    ]


def compression_notes(report: ExportReport) -> list[str]:
    """Per package whose smaller levels failed the gate: each of them and by how much (its
    reasons), and what the export holds instead. (A level the export holds and that failed
    is the export's own failure: its reasons are the report's.)"""
    notes = []
    tried = report.compression_trials or ()
    for package in dict.fromkeys(trial.package for trial in tried):
        trials = [trial for trial in tried if trial.package == package]
        failed = [trial for trial in trials if not trial.section.passed and not trial.published]
        if not failed:
            continue
        (held,) = (trial for trial in trials if trial.published)
        holds = "the FP16 package" if held.level == NONE else held.level
        notes.append(f"{package}: " + "; ".join(
            f"{trial.level} failed the gate ({'; '.join(trial.section.reasons)})"
            for trial in failed) + f"; the export holds {holds} ({held.bytes / 1e6:.2f} MB)")
    return notes


def report_sections(report: ExportReport) -> list[tuple[SectionLabels, ParitySection]]:
    """The report's sections with their labels, windowed first."""
    sections = [(WINDOWED, report.windowed)]
    if report.streaming is not None:
        sections.append((STREAMING, report.streaming))
    return sections


def section_title(labels: SectionLabels, section: ParitySection, report: ExportReport) -> str:
    """E.g. "Streaming package (stream.mlpackage), chunk 16 frames (0.64 s), left 64 frames
    (2.56 s): PASSED"."""
    title = labels.title
    if labels is STREAMING and report.stream_package:
        geometry = report.stream_package
        title += (f", chunk {geometry['chunk_frames']} frames ({geometry['chunk_seconds']:g} s), "
                  f"left {geometry['left_frames']} frames ({geometry['left_seconds']:g} s)")
    return f"{title}: {'PASSED' if section.passed else 'FAILED'}"


def _settings_line(report: ExportReport) -> str:
    window = report.window
    return (
        f"executor `{report.executor}`, prenormalizer `{report.prenormalizer}`, "
        f"softmax rescale `{report.softmax_rescale}`, window {window['seconds']} s "
        f"({window['frames']} frames) with {window['overlap_seconds']} s overlap, package "
        f"{report.package_bytes / 1e6:.2f} MB (weights: {report.compression or NONE}), export "
        f"{report.export_seconds:.0f} s; "
        f"Core ML runtime: {report.coreml_runtime}"
        + (f"; beam WERs (not gated): {report.beam_decoder}" if report.beam_decoder else "")
    )


def _section_markdown(labels: SectionLabels, section: ParitySection, report: ExportReport
                      ) -> list[str]:
    columns = table_columns(labels, section)
    return [
        f"## {section_title(labels, section, report)}",
        "",
        labels.note,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in parity_rows(section)),
        "",
    ]


def _mismatches_markdown(labels: SectionLabels, name: str, result: SetParity) -> list[str]:
    return [
        f"## Transcripts that differ in `{name}`: {labels.title} (first {MISMATCHES_KEPT})",
        "",
        f"{result.tied_mismatches} of the differing utterances differ only at frames where "
        f"FP32's two best logits were within {TIE_ULPS} FP16 ulps (a tie FP16 cannot order; "
        "the gate counts them only with export.count_ties=true). Per utterance: the largest "
        "FP32 margin, in FP16 ulps, among the frames whose best token FP16 changed.",
        "",
        *(f"- `{m.id}` ({m.fp32_margin_ulps} ulps): {labels.reference} \"{m.fp32_windowed}\" "
          f"/ FP16 \"{m.fp16}\" (reference \"{m.reference}\")" for m in result.mismatches),
        "",
    ]


def _compression_markdown(report: ExportReport) -> list[str]:
    return [
        "## Compression levels tried (export.compress)",
        "",
        "| " + " | ".join(COMPRESSION_COLUMNS) + " |",
        "|" + "---|" * len(COMPRESSION_COLUMNS),
        *("| " + " | ".join(row) + " |" for row in compression_rows(report)),
        "",
        *(f"- {note}" for note in compression_notes(report)),
        "",
    ]


def parity_markdown(report: ExportReport) -> str:
    """parity.md: verdict, settings, a table per section, reasons, mismatches and op counts."""
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [f"# Export parity: {verdict}", "",
             f"Checkpoint `{report.checkpoint}`; {_settings_line(report)}. WERs in percent.",
             ""]
    sections = report_sections(report)
    for labels, section in sections:
        lines += _section_markdown(labels, section, report)
    if report.compression_trials:
        lines += _compression_markdown(report)
    if report.reasons:
        lines += ["## Why it failed", "", *(f"- {reason}" for reason in report.reasons), ""]
    for labels, section in sections:
        for name, result in section.test_sets.items():
            if result.mismatches:
                lines += _mismatches_markdown(labels, name, result)
    lines += ["## Program ops (model.mlpackage)", "", "| op | count |", "|---|---|"]
    lines += [f"| {op} | {count} |" for op, count in report.ops.items()]
    return "\n".join(lines) + "\n"
