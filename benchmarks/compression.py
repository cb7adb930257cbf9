"""Compressed packages (export.compress) at every level: size, accuracy and executor speed.

Two measurements, each optional:

- `--ckpt RUN_OR_CKPT`: a trained checkpoint through export.py's own pipeline, first with
  export.compress=auto (which levels it tries, which it keeps), then once per level auto did
  not try (the FP16 package included), so every level has its size on disk, WER, identical
  share, logits PSNR and gate verdict per test set, all from the parity.json each export wrote.
- `--sizes s ...`: a random-weight model of each size (sizes and timings do not depend on
  training): per level, the package's size, the time coremltools takes to compress it, the
  share of its bytes left FP16 (the weights at or under compress.WEIGHT_THRESHOLD and the
  constants that are not conv weights), and the executor's real-time factor (fp16-strict, one
  thread) on the longest LibriSpeech test-other utterances, as benchmarks/export_speed.py.

    OMP_NUM_THREADS=1 python benchmarks/compression.py --ckpt outputs/digits-xs-depthwise-l2 \
        --data-dir /tmp/digits --sizes s --out compression.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no tqdm bar per coremltools pass

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from export_speed import LIBRISPEECH_TEST_OTHER, VOCAB_SIZE, longest_utterances  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edge_conformer.config.schemas import ExportSettings  # noqa: E402
from edge_conformer.data.audio import read_audio  # noqa: E402
from edge_conformer.data.features import LogMelFeatures  # noqa: E402
from edge_conformer.export import build_ane_model, convert_to_coreml  # noqa: E402
from edge_conformer.export.compress import (  # noqa: E402
    AUTO,
    LEVELS,
    compress_package,
    package_bytes,
)
from edge_conformer.export.pipeline import export_checkpoint  # noqa: E402
from edge_conformer.mil.executor import PackageExecutor  # noqa: E402
from edge_conformer.mil.package import load_program  # noqa: E402
from edge_conformer.model import build_model, count_parameters  # noqa: E402
from edge_conformer.records import CompressionTrial, ExportReport  # noqa: E402
from edge_conformer.runtime.windowing import (  # noqa: E402
    WindowSpec,
    package_window_runner,
    windowed_logits,
)

REPO = Path(__file__).resolve().parents[1]
EXECUTOR_MODE = "fp16-strict"  # the gate's default


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="a trained run or checkpoint")
    parser.add_argument("--data-dir", default=None, help="export.data_dir for --ckpt")
    parser.add_argument("--sizes", nargs="*", default=["s"], help="conf/model presets")
    parser.add_argument("--files", type=int, default=3, help="the N longest test-other files")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return parser.parse_args()


def export_settings(**overrides) -> ExportSettings:
    defaults = OmegaConf.load(REPO / "conf" / "export" / "default.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExportSettings), defaults,
                                               {"wandb": False, **overrides}))


# ---------------------------------------------------------------------------------------------
# A trained checkpoint: the gate at every level


def trained_levels(ckpt: Path, data_dir: str | None, workdir: Path) -> dict:
    """export.compress=auto, then every level it did not try; each level's gate results."""
    started = time.perf_counter()
    auto = export_checkpoint(ckpt, workdir / AUTO, export_settings(compress=AUTO,
                                                                   data_dir=data_dir)).report
    auto_seconds = time.perf_counter() - started
    trials = {(trial.package, trial.level): trial for trial in auto.compression_trials}
    for level in LEVELS:
        if ("model.mlpackage", level) in trials:
            continue
        report = export_checkpoint(ckpt, workdir / level,
                                   export_settings(compress=level, data_dir=data_dir)).report
        # Measured outside auto: not what auto kept.
        trials.update({(trial.package, trial.level): replace(trial, published=False)
                       for trial in report.compression_trials or _fp16_trials(report)})
    return {
        "auto": {"kept": auto.compression, "stream_kept": (auto.stream_package or {}).get(
                     "compression"), "passed": auto.passed, "seconds": round(auto_seconds, 1),
                 "tried": [f"{t.package}:{t.level}" for t in auto.compression_trials]},
        "levels": [trial_row(trial) for trial in trials.values()],
    }


def _fp16_trials(report: ExportReport) -> tuple[CompressionTrial, ...]:
    """export.compress=none records no trials: its sections, as trials of level none."""
    trials = [CompressionTrial("model.mlpackage", "none", report.package_bytes,
                               report.package_bytes, report.windowed, published=False)]
    if report.streaming is not None:
        size = report.stream_package["bytes"]
        trials.append(CompressionTrial("stream.mlpackage", "none", size, size,
                                       report.streaming, published=False))
    return tuple(trials)


def trial_row(trial: CompressionTrial) -> dict:
    return {
        "package": trial.package, "level": trial.level, "bytes": trial.bytes,
        "of_fp16": round(trial.bytes / trial.fp16_bytes, 3), "passed": trial.section.passed,
        "kept_by_auto": trial.published,
        "sets": {name: {"wer_reference": round(r.wer_fp32_windowed, 2),
                        "wer": round(r.wer_fp16, 2), "identical": round(r.identical, 3),
                        "psnr_db": None if r.logits_psnr_db is None
                        else round(r.logits_psnr_db, 1)}
                 for name, r in trial.section.test_sets.items()},
    }


# ---------------------------------------------------------------------------------------------
# Random weights: size, compression time, bytes left FP16, executor RTF


def fp16_share(package: Path) -> float:
    """Share of the package's constant bytes still plain FP16 (feeding no constexpr op)."""
    _, function = load_program(package)
    plain = total = 0
    for op in function.operations:
        value = op.outputs[0].val
        if op.op_type != "const" or not isinstance(value, np.ndarray):
            continue
        total += value.nbytes
        if not any(child.op_type.startswith("constexpr_") for child in op.outputs[0].child_ops):
            plain += value.nbytes
    return plain / total


def random_size(size: str, features: list[torch.Tensor], audio_seconds: float,
                window: WindowSpec, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(OmegaConf.load(REPO / "conf" / "model" / f"{size}.yaml"), VOCAB_SIZE,
                        feat_dim=80).eval()
    fp16 = convert_to_coreml(build_ane_model(model, window_frames=window.window_frames),
                             window_frames=window.window_frames, n_mels=80,
                             out_path=workdir / size / "none" / "model.mlpackage")
    rows = []
    for level in LEVELS:
        started = time.perf_counter()
        package = (fp16 if level == "none"
                   else compress_package(fp16, level, workdir / size / level / "model.mlpackage"))
        compress_seconds = time.perf_counter() - started
        started = time.perf_counter()
        executor = PackageExecutor(package, mode=EXECUTOR_MODE)
        load_seconds = time.perf_counter() - started
        run = package_window_runner(lambda inputs, e=executor: e(**inputs))
        started = time.perf_counter()
        for item in features:
            windowed_logits(item, run, window)
        rows.append({
            "level": level, "bytes": package_bytes(package),
            "of_fp16": round(package_bytes(package) / package_bytes(fp16), 3),
            "fp16_share": round(fp16_share(package), 4) if level != "none" else 1.0,
            "compress_seconds": round(compress_seconds, 1),
            "executor_load_seconds": round(load_seconds, 2),
            "rtf": round((time.perf_counter() - started) / audio_seconds, 4),
        })
    return {"size": size, "parameters": count_parameters(model), "levels": rows}


# ---------------------------------------------------------------------------------------------


def print_tables(results: dict) -> None:
    console = Console()
    if "trained" in results:
        trained = results["trained"]
        table = Table(title=f"{results['ckpt']}: every level through the gate "
                            f"(auto kept {trained['auto']['kept']})")
        for column in ("package", "level", "MB", "of FP16", "test set", "WER fp32", "WER",
                       "identical", "PSNR dB", "verdict"):
            table.add_column(column)
        for row in trained["levels"]:
            for name, result in row["sets"].items():
                table.add_row(row["package"], row["level"], f"{row['bytes'] / 1e6:.2f}",
                              f"{row['of_fp16']:.0%}", name, f"{result['wer_reference']:.2f}",
                              f"{result['wer']:.2f}", f"{result['identical']:.3f}",
                              str(result["psnr_db"]),
                              "passed" if row["passed"] else "failed")
        console.print(table)
    for model in results.get("random", []):
        table = Table(title=f"{model['size']} ({model['parameters'] / 1e6:.1f}M parameters, "
                            f"random weights): executor {EXECUTOR_MODE}, one window per 8 s")
        for column in ("level", "MB", "of FP16", "bytes left FP16", "compress s",
                       "executor load s", "RTF executor"):
            table.add_column(column)
        for row in model["levels"]:
            table.add_row(row["level"], f"{row['bytes'] / 1e6:.2f}", f"{row['of_fp16']:.0%}",
                          f"{row['fp16_share']:.2%}", f"{row['compress_seconds']:.1f}",
                          f"{row['executor_load_seconds']:.2f}", f"{row['rtf']:.3f}")
        console.print(table)


def main() -> None:
    args = parse_args()
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory() as workdir:
        if args.ckpt is not None:
            results["ckpt"] = str(args.ckpt)
            results["trained"] = trained_levels(args.ckpt, args.data_dir, Path(workdir))
        if args.sizes:
            files = longest_utterances(LIBRISPEECH_TEST_OTHER, args.files)
            front_end = LogMelFeatures()
            features = [front_end(read_audio(f, front_end.sample_rate)) for f in files]
            audio_seconds = sum(sf.info(f).duration for f in files)
            defaults = OmegaConf.load(REPO / "conf" / "export" / "default.yaml")
            window = WindowSpec.from_seconds(defaults.window_seconds, defaults.overlap_seconds,
                                             front_end.settings.frames_per_second)
            results["audio_seconds"] = round(audio_seconds, 2)
            results["random"] = [random_size(size, features, audio_seconds, window,
                                             Path(workdir)) for size in args.sizes]
    results["machine"]["load_average_1min"] = round(os.getloadavg()[0], 2)
    print_tables(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
