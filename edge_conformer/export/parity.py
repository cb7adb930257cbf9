"""The WER parity gate: does the FP16 package recognise what the FP32 model recognises?

Every utterance of a test set is decoded (greedy CTC) four ways:

- `fp32`: the training graph on the whole utterance (what training reported);
- `fp32_windowed`: the training graph window by window, stitched (see windowing.py);
- `fp16`: the saved package, run by the FP16 executor, windowed and stitched the same way;
- `coreml` (macOS only): the package in the real Core ML runtime.

FP16 is judged against `fp32_windowed`, which differs from it only in arithmetic; the cost of
windowing itself is `fp32_windowed` against `fp32`, reported but not gated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from lhotse import CutSet

from edge_conformer.data.dataset import load_cut_audio
from edge_conformer.data.features import LogMelFeatures
from edge_conformer.data.manifests import cut_text
from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode import decode_logits, error_rates
from edge_conformer.runtime.windowing import LogitsFn

MISMATCHES_KEPT = 10  # differing transcripts listed per test set in parity.json
# A frame is a numerical tie when FP32's two best logits lie within this many FP16 ulps (of the
# best logit): FP16 cannot order them reliably, however well the graph is protected.
TIE_ULPS = 4
PSNR_EPS = 1e-5  # as Apple's ml-ane-transformers: keeps the PSNR finite for equal outputs


@dataclass(frozen=True)
class EvalUtterance:
    utt_id: str
    text: str
    features: torch.Tensor  # (frames, n_mels), as the host computes them for the package


@dataclass(frozen=True)
class Recognizers:
    """The ways every utterance is decoded (see the module docstring)."""

    fp32: LogitsFn
    fp32_windowed: LogitsFn
    fp16: LogitsFn
    coreml: LogitsFn | None = None


@dataclass(frozen=True)
class ParityThresholds:
    min_identical: float  # share of utterances whose FP16 transcript equals FP32-windowed's
    max_wer_delta: float  # WER points FP16 may add over FP32-windowed


def featurised_utterances(cuts: CutSet, features: LogMelFeatures) -> Iterator[EvalUtterance]:
    """The cuts' utterances in order, with features as the host computes them (no dither)."""
    for cut in cuts:
        waveform = load_cut_audio(cut, features.sample_rate)
        yield EvalUtterance(cut.id, cut_text(cut), features(waveform))


class PsnrMeter:
    """PSNR of test logits against reference logits, accumulated over a test set.

    20 log10(max |reference| / RMS(test - reference)), Apple's definition for Neural Engine
    conversions (ml-ane-transformers), over every valid frame and class. Undefined (None) once
    the test logits held a non-finite value: the gate reports those separately.
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
        return 20 * math.log10((self.peak + PSNR_EPS) / (rms + PSNR_EPS))


def flipped_margin_ulps(reference: torch.Tensor, test: torch.Tensor) -> float:
    """The largest top-two margin of `reference` logits, in FP16 ulps of its best logit, over
    the frames whose best class `test` changed (0 when none changed).

    At most TIE_ULPS: every flip was a tie FP32 itself barely decided, not a numerical defect.
    """
    flipped = reference.argmax(-1) != test.argmax(-1)
    if not flipped.any():
        return 0.0
    top2 = reference[flipped].topk(2, dim=-1).values.numpy()
    ulps = np.spacing(np.abs(top2[:, 0]).astype(np.float16)).astype(np.float32)
    return float(((top2[:, 0] - top2[:, 1]) / ulps).max())


def _share_identical(hyps: list[str], reference_hyps: list[str]) -> float:
    if not hyps:
        return float("nan")
    return sum(h == r for h, r in zip(hyps, reference_hyps, strict=True)) / len(hyps)


def measure_test_set(
    utterances: Iterable[EvalUtterance],
    recognizers: Recognizers,
    tokenizer: Tokenizer,
    on_utterance: Callable[[], None] = lambda: None,
) -> dict:
    """Decode every utterance every way; WERs (percent), identical share and logits PSNR.

    Non-finite counts come from the executor, which the caller reads around this call.
    """
    refs: list[str] = []
    ways = ["fp32", "fp32_windowed", "fp16"] + (["coreml"] if recognizers.coreml else [])
    hyps: dict[str, list[str]] = {way: [] for way in ways}
    psnr = PsnrMeter()
    mismatches = []
    tied_mismatches = 0
    for utt in utterances:
        windowed = recognizers.fp32_windowed(utt.features)
        fp16 = recognizers.fp16(utt.features)
        psnr.add(windowed, fp16)
        transcripts = {
            "fp32": decode_logits(recognizers.fp32(utt.features), tokenizer),
            "fp32_windowed": decode_logits(windowed, tokenizer),
            "fp16": decode_logits(fp16, tokenizer),
        }
        if recognizers.coreml is not None:
            transcripts["coreml"] = decode_logits(recognizers.coreml(utt.features), tokenizer)
        for way, transcript in transcripts.items():
            hyps[way].append(transcript)
        refs.append(utt.text)
        if transcripts["fp16"] != transcripts["fp32_windowed"]:
            margin_ulps = flipped_margin_ulps(windowed, fp16)
            tied_mismatches += margin_ulps <= TIE_ULPS
            if len(mismatches) < MISMATCHES_KEPT:
                mismatches.append({"id": utt.utt_id, "reference": utt.text, **transcripts,
                                   "fp32_margin_ulps": round(margin_ulps, 2)})
        on_utterance()

    wer = {way: error_rates(refs, way_hyps)["wer"] for way, way_hyps in hyps.items()}
    result = {
        "utterances": len(refs),
        "wer_fp32": wer["fp32"],
        "wer_fp32_windowed": wer["fp32_windowed"],
        "wer_fp16": wer["fp16"],
        "windowing_cost": wer["fp32_windowed"] - wer["fp32"],
        "identical": _share_identical(hyps["fp16"], hyps["fp32_windowed"]),
        # Differing utterances whose every flipped frame was an FP32 tie (see TIE_ULPS):
        # diagnostic only, the gate counts them as differing.
        "tied_mismatches": tied_mismatches,
        "logits_psnr_db": psnr.db,
        "mismatches": mismatches,
    }
    if recognizers.coreml:
        result["coreml"] = {
            "wer": wer["coreml"],
            "identical": _share_identical(hyps["coreml"], hyps["fp32_windowed"]),
        }
    return result


def gate_failures(test_sets: dict[str, dict], thresholds: ParityThresholds) -> list[str]:
    """Why the package must not be published; empty when every test set passes."""
    reasons = []
    for name, result in test_sets.items():
        if not result["utterances"]:
            reasons.append(f"{name}: no utterances were decoded")
            continue
        if result["nonfinite"]:
            reasons.append(
                f"{name}: {result['nonfinite']} non-finite values in FP16 execution "
                f"(first at op {result['first_nonfinite_op']!r})"
            )
        if result["identical"] < thresholds.min_identical:
            differing = round((1 - result["identical"]) * result["utterances"])
            reasons.append(
                f"{name}: identical transcripts {result['identical']:.3f} "
                f"< min_identical {thresholds.min_identical} ({result['tied_mismatches']} of "
                f"the {differing} differing utterances differ only at FP32 ties)"
            )
        wer_delta = result["wer_fp16"] - result["wer_fp32_windowed"]
        if wer_delta > thresholds.max_wer_delta:
            reasons.append(
                f"{name}: FP16 WER {result['wer_fp16']:.2f}% is {wer_delta:.2f} points above "
                f"FP32-windowed {result['wer_fp32_windowed']:.2f}% (max_wer_delta "
                f"{thresholds.max_wer_delta})"
            )
    return reasons


# ---------------------------------------------------------------------------------------------
# Reports: parity.md and the console table share their rows


TABLE_COLUMNS = (
    "test set", "utts", "WER fp32 %", "WER fp32 windowed %", "WER fp16 %", "identical",
    "non-finite", "PSNR dB", "Core ML",
)


def _coreml_cell(result: dict) -> str:
    if "coreml" not in result:
        return "not run"
    coreml = result["coreml"]
    return f"WER {coreml['wer']:.2f}%, identical {coreml['identical']:.3f}"


def parity_rows(report: dict) -> list[tuple[str, ...]]:
    """One row of TABLE_COLUMNS per test set."""
    rows = []
    for name, result in report["test_sets"].items():
        psnr = result["logits_psnr_db"]
        rows.append((
            name,
            str(result["utterances"]),
            f"{result['wer_fp32']:.2f}",
            f"{result['wer_fp32_windowed']:.2f}",
            f"{result['wer_fp16']:.2f}",
            f"{result['identical']:.3f}",
            str(result["nonfinite"]),
            "n/a (non-finite)" if psnr is None else f"{psnr:.1f}",
            _coreml_cell(result),
        ))
    return rows


def _settings_line(report: dict) -> str:
    window = report["window"]
    return (
        f"executor `{report['executor']}`, prenormalizer `{report['prenormalizer']}`, "
        f"softmax rescale `{report['softmax_rescale']}`, window {window['seconds']} s "
        f"({window['frames']} frames) with {window['overlap_seconds']} s overlap, package "
        f"{report['package_bytes'] / 1e6:.2f} MB, export {report['export_seconds']:.0f} s; "
        f"Core ML runtime: {report['coreml_runtime']}"
    )


def parity_markdown(report: dict) -> str:
    """parity.md: verdict, settings, the per-set table, reasons, mismatches and op counts."""
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# Export parity: {verdict}",
        "",
        f"Checkpoint `{report['checkpoint']}`; {_settings_line(report)}.",
        "",
        "FP16 (the package, executed) is compared with the FP32 training graph run on the same "
        "windows; 'WER fp32' decodes whole utterances, so the cost of windowing is the "
        "difference of the first two WERs. 'identical': share of utterances whose FP16 "
        "transcript equals the FP32 windowed one; PSNR: FP16 logits against FP32 windowed.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
        *("| " + " | ".join(row) + " |" for row in parity_rows(report)),
        "",
    ]
    if report["reasons"]:
        lines += ["## Why it failed", "", *(f"- {reason}" for reason in report["reasons"]), ""]
    for name, result in report["test_sets"].items():
        if result["mismatches"]:
            lines += [f"## Transcripts that differ in `{name}` (first {MISMATCHES_KEPT})", ""]
            lines += [
                f"{result['tied_mismatches']} of the differing utterances differ only at "
                f"frames where FP32's two best logits were within {TIE_ULPS} FP16 ulps (a tie "
                "FP16 cannot order; the gate still counts them). Per utterance: the largest "
                "FP32 margin, in FP16 ulps, among the frames whose best token FP16 changed.",
                "",
            ]
            lines += [
                f"- `{m['id']}` ({m['fp32_margin_ulps']} ulps): FP32 windowed "
                f"\"{m['fp32_windowed']}\" / FP16 \"{m['fp16']}\" (reference \"{m['reference']}\")"
                for m in result["mismatches"]
            ]
            lines.append("")
    lines += ["## Program ops", "", "| op | count |", "|---|---|"]
    lines += [f"| {op} | {count} |" for op, count in report["ops"].items()]
    return "\n".join(lines) + "\n"
