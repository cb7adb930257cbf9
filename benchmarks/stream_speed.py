"""Streaming cost per chunk: the FP32 chunk loop vs the streaming package in the executor.

One stream of `--seconds` (60) of features through a random-weight model (vocabulary 256, 80
mels, `model.conv_context=chunk`) at a chunk context of `--chunk-frames` (16: 640 ms) and
`--left-frames` (64: 2.56 s), chunk by chunk from zero caches, with each chunk timed:

- the PyTorch FP32 chunk loop (`ConformerCTC.forward_chunk`, as `TorchChunks` runs it), on one
  thread (`torch.set_num_threads(1)`);
- the streaming package (`build_stream_model` -> `convert_stream_to_coreml`) run by the MIL
  executor (`--executor-mode`, fp16), as `PackageChunks` runs it (host-side array handling
  included).

The stream runs `--repeats` times per backend (after one untimed warm-up chunk). Reported per
backend: the median and 90th percentile of every timed chunk, the chunk's real-time factor
(median / chunk duration), and flatness: the median of the first 10 chunks of a stream and of
the last 10 chunks of the stream, and their ratio (1.0: a chunk late in the stream costs what an
early one does). The two are timed alternately (the last 10 chunks of one stream interleaved
with the first 10 of a fresh one), so a change in the shared machine's load over the stream
does not pass for a cost that grows with it.
Also the algorithmic latency (chunk + front end look-ahead, `stream_description`, for the
16 kHz LibriSpeech front end) and the PSNR of the package's logits against the FP32 loop's
(checks that the package timed is this model). Timings do not depend on weight values or
features, so both are random (features N(0, 1), as globally normalised log-mels are).

    python benchmarks/stream_speed.py                              # S, 60 s, 3 repeats
    python benchmarks/stream_speed.py --size xs --seconds 15 --repeats 1   # smoke test
    python benchmarks/stream_speed.py --work-dir /tmp/stream_bench --profile 5

Conversion of S takes minutes: `--work-dir` keeps the package (keyed by size, geometry and a
digest of the weights) for the next run; delete it after changing the export code.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Before anything imports tqdm (it reads its settings then): no tqdm bar per conversion pass.
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edge_conformer.data.features import FeatureSettings, LogMelFeatures  # noqa: E402
from edge_conformer.export.convert import convert_stream_to_coreml  # noqa: E402
from edge_conformer.export.parity import PsnrMeter  # noqa: E402
from edge_conformer.export.stream_graph import build_stream_model  # noqa: E402
from edge_conformer.mil.executor import PackageExecutor  # noqa: E402
from edge_conformer.model import ConformerCTC, build_model, count_parameters  # noqa: E402
from edge_conformer.model.streaming import ChunkContext  # noqa: E402
from edge_conformer.runtime.stream_package import StreamPackage, stream_description  # noqa: E402
from edge_conformer.runtime.streaming import ChunkBackend, PackageChunks, TorchChunks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 256  # conf/data/common/asr_16k.yaml
N_MELS = 80
EDGE_CHUNKS = 10  # chunks at each end of the stream compared for flatness
# The targets.
MAX_FP32_RTF = 0.1  # FP32 chunk loop, one thread: under a tenth of the chunk's duration
MAX_EXECUTOR_VS_FP32 = 3.0
MAX_DRIFT = 0.10  # last-10 vs first-10 chunk medians


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="s", help="conf/model preset (default s)")
    parser.add_argument("--chunk-frames", type=int, default=16, help="encoder frames per chunk")
    parser.add_argument("--left-frames", type=int, default=64, help="encoder frames of left")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the stream")
    parser.add_argument("--repeats", type=int, default=3, help="streams timed per backend")
    parser.add_argument("--executor-mode", default="fp16", help="PackageExecutor mode")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the converted package here for later runs (default: a "
                             "temporary directory, converted every run)")
    parser.add_argument("--profile", type=int, default=0, metavar="CHUNKS",
                        help="also cProfile the executor over this many chunks; print top ops")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if args.repeats < 1 or args.seconds <= 0:
        parser.error("--repeats must be at least 1 and --seconds positive")
    return args


def streaming_model(size: str) -> ConformerCTC:
    """conf/model/<size>.yaml with the streamable `chunk` convolution, random weights (seed 0)."""
    config_file = REPO / "conf" / "model" / f"{size}.yaml"
    if not config_file.is_file():
        raise SystemExit(f"--size {size}: no {config_file}")
    model_cfg = OmegaConf.load(config_file)
    model_cfg.conv_context = "chunk"
    torch.manual_seed(0)
    return build_model(model_cfg, VOCAB_SIZE, feat_dim=N_MELS).eval()


def weights_digest(model: ConformerCTC) -> str:
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def stream_package_path(model: ConformerCTC, context: ChunkContext, work_dir: Path) -> Path:
    """The model's streaming package under `work_dir`, converted only when not there yet."""
    name = (f"stream-{model.name}-c{context.chunk_frames}-l{context.left_frames}-"
            f"{weights_digest(model)}.mlpackage")
    path = work_dir / name
    if path.exists():
        print(f"reusing {path}")
        return path
    started = time.perf_counter()
    convert_stream_to_coreml(build_stream_model(model, context), path)
    print(f"converted {path} in {time.perf_counter() - started:.0f} s")
    return path


def chunk_times(new_backend: Callable[[], ChunkBackend], features: torch.Tensor,
                repeats: int) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Seconds per chunk of streams of `features` from zero caches, and the last stream's
    logits.

    Each repeat streams every chunk (all timed: "all"), but the last EDGE_CHUNKS alternate
    with the first EDGE_CHUNKS of a second, fresh stream: "first" and "last" are then measured
    side by side in time, so a change of the shared machine's load during the stream cannot
    pass for a cost that grows with the stream.
    """
    step = new_backend().feature_frames
    chunks = [features[start : start + step] for start in range(0, len(features), step)]
    if len(chunks) < 2 * EDGE_CHUNKS:
        raise SystemExit(f"--seconds: the stream needs at least {2 * EDGE_CHUNKS} chunks")
    times = {"all": [], "first": [], "last": []}

    def timed(backend: ChunkBackend, chunk: torch.Tensor, *kinds: str) -> torch.Tensor:
        started = time.perf_counter()
        logits = backend.step(chunk)
        for kind in kinds:
            times[kind].append(time.perf_counter() - started)
        return logits

    new_backend().step(chunks[0])  # warm-up: first-call allocations stay out of the timings
    for _ in range(repeats):
        stream, fresh = new_backend(), new_backend()
        logits = [timed(stream, chunk, "all") for chunk in chunks[:-EDGE_CHUNKS]]
        for early, late in zip(chunks[:EDGE_CHUNKS], chunks[-EDGE_CHUNKS:], strict=True):
            timed(fresh, early, "first")
            logits.append(timed(stream, late, "all", "last"))
    return {kind: np.array(values) for kind, values in times.items()}, torch.cat(logits)


def summarise(times: dict[str, np.ndarray], chunk_seconds: float) -> dict:
    """Median / p90 over every timed chunk; the first and last chunks' medians."""
    first, last = (float(np.median(times[kind])) for kind in ("first", "last"))
    median = float(np.median(times["all"]))
    return {
        "median_ms": 1e3 * median,
        "p90_ms": 1e3 * float(np.percentile(times["all"], 90)),
        "rtf": median / chunk_seconds,
        "first10_ms": 1e3 * first,
        "last10_ms": 1e3 * last,
        "last_over_first": last / first,
    }


def profile_executor(backend: PackageChunks, features: torch.Tensor, chunks: int) -> str:
    """cProfile over `chunks` chunks of the executor: the top functions by own time, and the
    op kernels (named after their MIL ops) by cumulative time."""
    step = backend.feature_frames
    backend.reset()
    profiler = cProfile.Profile()
    profiler.enable()
    for start in range(0, chunks * step, step):
        backend.step(features[start : start + step])
    profiler.disable()
    report = io.StringIO()
    stats = pstats.Stats(profiler, stream=report)
    stats.sort_stats("tottime").print_stats(12)  # where the time goes, kernels or not
    stats.sort_stats("cumtime").print_stats("kernels.py", 12)  # the ops, their kernels
    return report.getvalue()


def verdicts(results: dict) -> list[str]:
    fp32, executor = results["fp32_loop"], results["executor"]
    ratio = executor["median_ms"] / fp32["median_ms"]
    results["executor_over_fp32"] = ratio
    checks = [
        (fp32["rtf"] < MAX_FP32_RTF, f"FP32 chunk loop RTF {fp32['rtf']:.3f} < {MAX_FP32_RTF}"),
        (ratio <= MAX_EXECUTOR_VS_FP32,
         f"executor / FP32 median {ratio:.2f} <= {MAX_EXECUTOR_VS_FP32}"),
    ]
    for name in ("fp32_loop", "executor"):
        drift = results[name]["last_over_first"]
        checks.append((abs(drift - 1) <= MAX_DRIFT,
                       f"{name}: last-10 / first-10 chunks {drift:.3f} within 1 +- {MAX_DRIFT}"))
    return [f"{'holds' if ok else 'MISSED'}: {text}" for ok, text in checks]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    model = streaming_model(args.size)
    context = ChunkContext(args.chunk_frames, args.left_frames)
    front_end = LogMelFeatures(FeatureSettings(normalize="none"))  # LibriSpeech's 16 kHz
    description = stream_description(model, context, front_end)
    frames = round(args.seconds * front_end.settings.frames_per_second)
    features = torch.randn(frames, N_MELS, generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as scratch:
        work_dir = args.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        package_path = stream_package_path(model, context, work_dir)
        executor = PackageExecutor(package_path, mode=args.executor_mode)
        package = StreamPackage(lambda inputs: executor(**inputs), description)
        fp32_times, fp32_logits = chunk_times(lambda: TorchChunks(model, context), features,
                                              args.repeats)
        package_times, package_logits = chunk_times(lambda: PackageChunks(package), features,
                                                    args.repeats)
        profile = None
        if args.profile:
            profile = profile_executor(PackageChunks(package), features, args.profile)

    psnr = PsnrMeter()
    psnr.add(fp32_logits, package_logits)
    chunk_seconds = description["chunk_seconds"]
    results = {
        "size": args.size, "parameters": count_parameters(model),
        "chunk_frames": context.chunk_frames, "left_frames": context.left_frames,
        "chunk_seconds": chunk_seconds,
        "algorithmic_latency_seconds": description["algorithmic_latency_seconds"],
        "stream_seconds": args.seconds, "chunks": -(-frames // context.feature_frames),
        "repeats": args.repeats,
        "executor_mode": args.executor_mode, "logits_psnr_db": psnr.db,
        "fp32_loop": summarise(fp32_times, chunk_seconds),
        "executor": summarise(package_times, chunk_seconds),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
    }
    checks = verdicts(results)

    console = Console(width=120)
    table = Table(title=(
        f"{args.size} ({results['parameters'] / 1e6:.1f}M), chunk {context.chunk_frames} "
        f"({1e3 * chunk_seconds:.0f} ms), left {context.left_frames}, {results['chunks']} chunks "
        f"x {args.repeats}; algorithmic latency "
        f"{1e3 * results['algorithmic_latency_seconds']:.1f} ms"))
    for column in ("backend", "median ms", "p90 ms", "RTF", "first 10 ms", "last 10 ms",
                   "last / first"):
        table.add_column(column, justify="right")
    for name, label in (("fp32_loop", "FP32 chunk loop"),
                        ("executor", f"executor {args.executor_mode}")):
        r = results[name]
        table.add_row(label, f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['rtf']:.3f}",
                      f"{r['first10_ms']:.1f}", f"{r['last10_ms']:.1f}",
                      f"{r['last_over_first']:.3f}")
    console.print(table)
    psnr_text = "non-finite" if psnr.db is None else f"{psnr.db:.1f} dB"
    console.print(f"executor / FP32 median: {results['executor_over_fp32']:.2f}; logits PSNR "
                  f"(executor vs FP32 loop): {psnr_text}; load average "
                  f"{results['machine']['load_average_1min']}")
    for line in checks:
        console.print(line)
    if profile:
        print(profile)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
