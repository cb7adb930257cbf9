"""Inference speed of our Conformer blocks vs `torchaudio.models.Conformer` of the same size.

Both stacks get the same input: 10 s of audio after 4x subsampling (250 frames of d_model, batch
1), in eval mode under `torch.inference_mode`, on one thread. Ours is the training graph's
blocks (conf/model/<size>.yaml, random weights, full context); torchaudio's has the same
d_model, heads, feed-forward width, layers, depthwise kernel and dropout. With `--train` both
run a training step instead (train mode, forward and backward of a sum of squares), e.g. on
the default recipe's batches. The script prints

- the FLOPs of both (torch.utils.flop_counter.FlopCounterMode: matmuls, convolutions and
  attention; with `--train` the backward's too), which must match for the comparison to
  mean anything;
- the median time per forward over alternating runs in one process: wall time, and the
  thread's CPU time, which other jobs on a shared machine disturb less;
- the top operators of both by self CPU time (torch.profiler), per forward.

    python benchmarks/encoder_speed.py                # S, 25 alternating rounds
    python benchmarks/encoder_speed.py --size xs --rounds 10 --top 8
    python benchmarks/encoder_speed.py --size xs --train --batch 8 --seconds 4

To time another version of the model code with the same script, put its package first:
`git archive <commit> edge_conformer | tar -x -C /tmp/old && PYTHONPATH=/tmp/old python ...`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from omegaconf import OmegaConf
from torch import nn
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from edge_conformer.model import build_model
from edge_conformer.model.streaming import chunk_attention_mask

REPO = Path(__file__).resolve().parents[1]
FRAMES_PER_SECOND = 25  # encoder frames: 10 ms hops, 4x subsampling


@dataclass(frozen=True)
class Timing:
    wall: float  # median seconds per forward
    cpu: float  # median thread CPU seconds per forward


@dataclass(frozen=True)
class OpShare:
    name: str
    calls: float  # per forward
    self_ms: float  # per forward


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="s", help="conf/model preset")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length")
    parser.add_argument("--rounds", type=int, default=25, help="alternating timed runs")
    parser.add_argument("--top", type=int, default=12, help="operators listed per model")
    parser.add_argument("--batch", type=int, default=1, help="utterances, all of full length")
    parser.add_argument("--train", action="store_true", help="time a training step instead")
    return parser.parse_args()


def our_blocks(size: str, x: torch.Tensor, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The preset's Conformer blocks at full context, as `ConformerCTC.forward` runs them."""
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{size}.yaml")
    model = build_model(cfg, 256, 80).train(train)
    padding = torch.zeros(x.shape[:2], dtype=torch.bool)
    mask = chunk_attention_mask(padding, None)

    def run(x: torch.Tensor) -> torch.Tensor:
        for block in model.blocks:
            x = block(x, padding, mask)
        return x

    return run


def torchaudio_blocks(
    size: str, x: torch.Tensor, train: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{size}.yaml")
    model: nn.Module = torchaudio.models.Conformer(
        input_dim=cfg.d_model, num_heads=cfg.num_heads, ffn_dim=cfg.ffn_mult * cfg.d_model,
        num_layers=cfg.num_layers, depthwise_conv_kernel_size=cfg.conv_kernel_size,
        dropout=cfg.dropout,
    ).train(train)
    lengths = torch.full(x.shape[:1], x.shape[1])
    return lambda x: model(x, lengths)[0]


def training_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward and backward (the gradients accumulate; their values do not matter here)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        out = forward(x)
        out.square().sum().backward()
        return out

    return run


def flops(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run(x)
    return counter.get_total_flops()


def alternating_timings(
    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, rounds: int
) -> dict[str, Timing]:
    """Median wall and CPU time per forward, the models taking turns so drift hits both."""
    for run in runs.values():  # warm-up: allocator, oneDNN primitive caches
        run(x)
        run(x)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started_wall, started_cpu = time.perf_counter(), time.thread_time()
            run(x)
            cpu[name].append(time.thread_time() - started_cpu)
            wall[name].append(time.perf_counter() - started_wall)
    return {
        name: Timing(statistics.median(wall[name]), statistics.median(cpu[name])) for name in runs
    }


def top_ops(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, count: int, repeats: int = 5
) -> list[OpShare]:
    with profile() as prof:
        for _ in range(repeats):
            run(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        OpShare(e.key, e.count / repeats, e.self_cpu_time_total / 1e3 / repeats)
        for e in events[:count]
    ]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    frames = round(args.seconds * FRAMES_PER_SECOND)
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{args.size}.yaml")
    x = torch.randn(args.batch, frames, cfg.d_model)
    runs = {"ours": our_blocks(args.size, x, args.train),
            "torchaudio": torchaudio_blocks(args.size, x, args.train)}
    if args.train:
        runs = {name: training_step(run) for name, run in runs.items()}
    with torch.inference_mode(not args.train):
        counts = {name: flops(run, x) for name, run in runs.items()}
        timings = alternating_timings(runs, x, args.rounds)
        profiles = {name: top_ops(run, x, args.top) for name, run in runs.items()}

    print(f"{datetime.date.today()}, {cpu_model()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, torch {torch.__version__}, torchaudio "
          f"{torchaudio.__version__}, 1 thread")
    mode = "training step (forward + backward)" if args.train else "eval, inference mode"
    print(f"{args.size.upper()} blocks (d_model {cfg.d_model}, {cfg.num_heads} heads, ffn "
          f"{cfg.ffn_mult * cfg.d_model}, {cfg.num_layers} layers, kernel "
          f"{cfg.conv_kernel_size}), {mode}, batch {args.batch} x {args.seconds:g} s = "
          f"{frames} frames, median of {args.rounds} alternating runs\n")
    print("| model | GFLOP | wall s | CPU s |\n|---|---|---|---|")
    for name, timing in timings.items():
        print(f"| {name} | {counts[name] / 1e9:.2f} | {timing.wall:.4f} | {timing.cpu:.4f} |")
    ours, theirs = timings["ours"], timings["torchaudio"]
    print(f"\nours / torchaudio: wall {ours.wall / theirs.wall:.2f}x, "
          f"CPU {ours.cpu / theirs.cpu:.2f}x")
    for name, ops in profiles.items():
        total = sum(op.self_ms for op in ops)
        print(f"\nTop operators, {name} (self CPU ms per forward; top {args.top} = "
              f"{total:.1f} ms)\n\n| operator | calls | self ms |\n|---|---|---|")
        for op in ops:
            print(f"| `{op.name}` | {op.calls:g} | {op.self_ms:.2f} |")


if __name__ == "__main__":
    main()
