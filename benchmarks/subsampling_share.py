"""The convolutional subsampling's share of the model's FLOPs, per layer, and the channel count
that brings it down to the paper's figure (Xu et al. 2024: 32.8% regular -> 4.0% depthwise).

For each size (conf/model/<size>.yaml) and subsampling kind, one forward of the whole
ConformerCTC (subsampling, blocks, CTC head over `--vocab` tokens) on `--seconds` of 80-bin
log-mel features is counted with torch.utils.flop_counter.FlopCounterMode (matmuls,
convolutions, attention; element-wise ops are not counted). The per-layer columns are the
subsampling's leaf layers: conv1 (3x3 stride 2, one input channel), the second stage (regular:
one 3x3 stride-2 conv; depthwise: its 3x3 depthwise and 1x1 pointwise parts) and `out`, the
Linear from channels x frequency bins to d_model. Then, for the depthwise kind, the
`model.subsampling_channels` candidates are counted, and the one whose share is nearest
`--target` percent is reported per size: the override that reaches the paper's figure.

    python benchmarks/subsampling_share.py                      # xs, s, m, l
    python benchmarks/subsampling_share.py --sizes s --channels 64 80 96
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from edge_conformer.model import build_model

REPO = Path(__file__).resolve().parents[1]
FEATURE_FRAMES_PER_SECOND = 100  # 10 ms hops
N_MELS = 80
# Leaf layers of ConvSubsampling by FlopCounterMode's module names; `conv2` is the regular
# kind's second conv, `conv2.0` / `conv2.1` the depthwise kind's depthwise / pointwise parts.
LAYERS = ("conv1", "conv2", "conv2.0", "conv2.1", "out")
SUBSAMPLING = "ConformerCTC.subsampling"


@dataclass(frozen=True)
class Share:
    size: str
    kind: str
    channels: int
    total: int  # FLOPs of the whole model
    layers: dict[str, int]  # FLOPs per leaf layer of the subsampling

    @property
    def subsampling(self) -> int:
        return sum(self.layers.values())

    def percent(self, flops: int) -> float:
        return 100.0 * flops / self.total


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["xs", "s", "m", "l"])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length")
    parser.add_argument("--vocab", type=int, default=256, help="CTC tokens (asr_16k's 256)")
    parser.add_argument("--target", type=float, default=4.0, help="share to reach, percent")
    parser.add_argument("--channels", nargs="+", type=int,
                        default=[16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256],
                        help="model.subsampling_channels candidates (depthwise)")
    return parser.parse_args()


def count(size: str, kind: str, channels: int | None, args: argparse.Namespace) -> Share:
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{size}.yaml")
    cfg.subsampling, cfg.subsampling_channels = kind, channels
    model = build_model(cfg, args.vocab, feat_dim=N_MELS).eval()
    frames = round(args.seconds * FEATURE_FRAMES_PER_SECOND)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.randn(1, frames, N_MELS), torch.tensor([frames]))
    per_module = counter.get_flop_counts()
    layers = {
        layer: sum(per_module[f"{SUBSAMPLING}.{layer}"].values())
        for layer in LAYERS
        if f"{SUBSAMPLING}.{layer}" in per_module and not (kind == "depthwise" and layer == "conv2")
    }
    return Share(size, kind, model.subsampling.channels, counter.get_total_flops(), layers)


def print_shares(shares: list[Share]) -> None:
    print("| size | subsampling | channels | model GFLOP | subsampling share | "
          + " | ".join(LAYERS) + " |")
    print("|---" * (5 + len(LAYERS)) + "|")
    for share in shares:
        cells = [
            f"{share.percent(share.layers[layer]):.1f}" if layer in share.layers else "-"
            for layer in LAYERS
        ]
        print(f"| {share.size} | {share.kind} | {share.channels} | {share.total / 1e9:.2f} | "
              f"**{share.percent(share.subsampling):.1f} %** | " + " | ".join(cells) + " |")


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    print(f"Subsampling share of the model's FLOPs, {args.seconds:g} s of audio; per-layer "
          "columns in percent of the model\n")
    print_shares([count(size, kind, None, args)
                  for size in args.sizes for kind in ("regular", "depthwise")])
    sweeps = {
        size: [count(size, "depthwise", channels, args) for channels in sorted(args.channels)]
        for size in args.sizes
    }
    print("\nDepthwise subsampling share (%) by `model.subsampling_channels`:\n")
    print("| size | " + " | ".join(str(c) for c in sorted(args.channels)) + " |")
    print("|---" * (1 + len(args.channels)) + "|")
    for size, sweep in sweeps.items():
        print(f"| {size} | " + " | ".join(
            f"{share.percent(share.subsampling):.1f}" for share in sweep) + " |")
    print(f"\nThe candidate nearest {args.target} % per size:\n")
    print_shares([
        min(sweep, key=lambda share: abs(share.percent(share.subsampling) - args.target))
        for sweep in sweeps.values()
    ])

if __name__ == "__main__":
    main()
