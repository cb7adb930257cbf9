"""Export time and real-time factors: the package executor (fp16, fp16-strict) vs FP32 PyTorch.

For each model size: the time to build the Neural Engine graph and convert it to an FP16
Core ML package (what export.py spends before its parity check), then the real-time factor
(processing seconds per second of audio) on real LibriSpeech test-other speech of

- PyTorch FP32, the training graph on whole utterances;
- PyTorch FP32, the training graph on the package's windows (what parity compares against);
- the package executor in `fp16` and `fp16-strict` mode, on the same windows;

all in the same run, on the same features. Weights are random (the timings do not depend on
training; random weights keep the benchmark free of checkpoints); the vocabulary is the
LibriSpeech recipe's 256 pieces. For single-core figures run it as

    OMP_NUM_THREADS=1 python benchmarks/export_speed.py                 # xs and s, 3 files
    OMP_NUM_THREADS=1 python benchmarks/export_speed.py --sizes xs --files 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# Before anything imports tqdm (it reads its settings then): no tqdm bar per conversion pass.
os.environ.setdefault("TQDM_DISABLE", "1")

import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edge_conformer.data.audio import read_audio  # noqa: E402
from edge_conformer.data.features import LogMelFeatures  # noqa: E402
from edge_conformer.export import build_ane_model, convert_to_coreml  # noqa: E402
from edge_conformer.mil.executor import PackageExecutor  # noqa: E402
from edge_conformer.model import (
    build_model,  # noqa: E402
    count_parameters,  # noqa: E402
)
from edge_conformer.runtime.windowing import (  # noqa: E402
    WindowSpec,
    package_window_runner,
    torch_window_runner,
    whole_utterance_logits,
    windowed_logits,
)

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH_TEST_OTHER = REPO.parent / "shared" / "data" / "LibriSpeech" / "test-other"
VOCAB_SIZE = 256  # conf/data/common/asr_16k.yaml
EXECUTOR_BENCH_MODES = ("fp16", "fp16-strict")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"], help="conf/model presets")
    parser.add_argument("--files", type=int, default=3,
                        help="the N longest test-other utterances (about 20 s each)")
    parser.add_argument("--corpus", type=Path, default=LIBRISPEECH_TEST_OTHER)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return parser.parse_args()


def longest_utterances(corpus: Path, count: int) -> list[Path]:
    files = sorted(corpus.glob("*/*/*.flac"), key=lambda f: sf.info(f).frames)
    if not files:
        raise FileNotFoundError(f"{corpus}: no LibriSpeech .flac files")
    return files[-count:]


def seconds(function, inputs: list) -> float:
    started = time.perf_counter()
    for item in inputs:
        function(item)
    return time.perf_counter() - started


def bench_size(size: str, features: list[torch.Tensor], audio_seconds: float,
               window: WindowSpec, workdir: Path) -> dict:
    model_cfg = OmegaConf.load(REPO / "conf" / "model" / f"{size}.yaml")
    torch.manual_seed(0)
    model = build_model(model_cfg, VOCAB_SIZE, feat_dim=80).eval()

    started = time.perf_counter()
    ane_model = build_ane_model(model, window_frames=window.window_frames)
    package = convert_to_coreml(ane_model, window_frames=window.window_frames, n_mels=80,
                                out_path=workdir / f"{size}.mlpackage")
    export_seconds = time.perf_counter() - started

    run_fp32 = torch_window_runner(model)
    rtf = {
        "fp32_whole": seconds(lambda f: whole_utterance_logits(model, f), features),
        "fp32_windowed": seconds(lambda f: windowed_logits(f, run_fp32, window), features),
    }
    for mode in EXECUTOR_BENCH_MODES:
        executor = PackageExecutor(package, mode=mode)
        run_package = package_window_runner(lambda inputs, e=executor: e(**inputs))
        rtf[mode] = seconds(lambda f, r=run_package: windowed_logits(f, r, window), features)
    return {
        "size": size,
        "parameters": count_parameters(model),
        "export_seconds": round(export_seconds, 1),
        "rtf": {name: round(value / audio_seconds, 4) for name, value in rtf.items()},
    }


def main() -> None:
    args = parse_args()
    files = longest_utterances(args.corpus, args.files)
    front_end = LogMelFeatures()
    features = [front_end(read_audio(f, front_end.sample_rate)) for f in files]
    audio_seconds = sum(sf.info(f).duration for f in files)
    export_defaults = OmegaConf.load(REPO / "conf" / "export" / "default.yaml")
    window = WindowSpec.from_seconds(
        export_defaults.window_seconds, export_defaults.overlap_seconds,
        frames_per_second=front_end.settings.frames_per_second,
    )

    with tempfile.TemporaryDirectory() as workdir:
        results = [bench_size(size, features, audio_seconds, window, Path(workdir))
                   for size in args.sizes]
    machine = {
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "audio_seconds": round(audio_seconds, 2), "files": [f.name for f in files],
        "window_frames": window.window_frames, "overlap_frames": window.overlap_frames,
    }

    table = Table(title=f"Export time and real-time factor ({audio_seconds:.1f} s of "
                        f"test-other, {torch.get_num_threads()} torch threads, random weights)")
    columns = ["model", "params", "export s", "RTF fp32 whole", "RTF fp32 windowed",
               "RTF executor fp16", "RTF executor fp16-strict"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["size"], f"{r['parameters'] / 1e6:.1f}M", f"{r['export_seconds']:.0f}",
                      *(f"{r['rtf'][k]:.3f}" for k in ("fp32_whole", "fp32_windowed",
                                                       *EXECUTOR_BENCH_MODES)))
    Console().print(table)
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
