"""Which MIL op types each export variant emits: the op table of docs/export.md.

    python tools/op_inventory.py                      # xs model, markdown table on stdout
    python tools/op_inventory.py --model conf/model/s.yaml --num-layers 2

Converts one randomly initialised model per variant (subsampling x norm x pre-normaliser x
softmax re-scaling, 24 in all) exactly as export.py does (`build_ane_model` +
`convert_to_coreml`, FP16), reads each package back and counts its op types. Variants whose
programs hold the same op types with the same counts share one row. Slow: the 24 xs
conversions took 43 min on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from edge_conformer.export import build_ane_model, convert_to_coreml, mil_op_histogram
from edge_conformer.model.factory import build_model
from edge_conformer.numerics import PRENORMALIZERS

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model" / "xs.yaml"
N_MELS = 80  # conf/data: 80 log-mel bins
WINDOW_FRAMES = 800  # export.window_seconds (8 s) at the 10 ms hop
VOCAB_SIZE = 32  # op types do not depend on it; only the head's width does
SUBSAMPLINGS = ("regular", "depthwise")
NORMS = ("l2", "mad")
SOFTMAX_RESCALES = (True, False)


@dataclass(frozen=True)
class Variant:
    subsampling: str
    norm: str
    prenormalizer: str
    softmax_rescale: bool

    def slug(self) -> str:
        rescale = "rescale" if self.softmax_rescale else "plain"
        return f"{self.subsampling}-{self.norm}-{self.prenormalizer}-{rescale}"

    def label(self) -> str:
        rescale = "rescaled softmax" if self.softmax_rescale else "plain softmax"
        return f"{self.subsampling}, {self.norm}, pre-norm {self.prenormalizer}, {rescale}"


def all_variants() -> Iterator[Variant]:
    for axes in itertools.product(SUBSAMPLINGS, NORMS, PRENORMALIZERS, SOFTMAX_RESCALES):
        yield Variant(*axes)


def _generic_weights(model: nn.Module) -> nn.Module:
    """Perturb initial weights: exact 1s and 0s (norm scales, biases) could be folded away by
    conversion, which a trained model's weights never are."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_(std=0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def variant_histogram(model_cfg: dict, variant: Variant, workdir: Path) -> dict[str, int]:
    """Op counts by type (constants excluded) of the FP16 package of one variant."""
    config = {**model_cfg, "subsampling": variant.subsampling, "norm": variant.norm}
    model = _generic_weights(build_model(config, vocab_size=VOCAB_SIZE, feat_dim=N_MELS))
    ane_model = build_ane_model(
        model,
        prenormalizer=variant.prenormalizer,
        softmax_rescale=variant.softmax_rescale,
        window_frames=WINDOW_FRAMES,
    )
    package = convert_to_coreml(
        ane_model,
        window_frames=WINDOW_FRAMES,
        n_mels=N_MELS,
        out_path=workdir / f"{variant.slug()}.mlpackage",
    )
    return mil_op_histogram(package)


def markdown_table(histograms: dict[Variant, dict[str, int]]) -> str:
    """One row per distinct histogram: the variants that emit it, then its op types x count."""
    variants_by_histogram: dict[tuple[tuple[str, int], ...], list[Variant]] = {}
    for variant, histogram in histograms.items():
        key = tuple(sorted(histogram.items()))
        variants_by_histogram.setdefault(key, []).append(variant)
    lines = ["| variants (subsampling, norm, pre-normaliser, softmax) | op types (count) |"]
    lines.append("|---|---|")
    for key, variants in variants_by_histogram.items():
        names = "<br>".join(variant.label() for variant in variants)
        ops = ", ".join(f"{op_type} {count}" for op_type, count in key)
        lines.append(f"| {names} | {ops} |")
    every_op = sorted({op_type for histogram in histograms.values() for op_type in histogram})
    lines.append("")
    lines.append(f"Op types over all variants ({len(every_op)}): {', '.join(every_op)}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="a conf/model/*.yaml (default: xs)"
    )
    parser.add_argument("--num-layers", type=int, help="override the config's num_layers")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    if args.num_layers is not None and args.num_layers < 1:
        parser.error(f"--num-layers must be at least 1, got {args.num_layers}")

    model_cfg = OmegaConf.to_container(OmegaConf.load(args.model))
    if args.num_layers is not None:
        model_cfg["num_layers"] = args.num_layers
    with tempfile.TemporaryDirectory() as workdir:
        histograms = {
            variant: variant_histogram(model_cfg, variant, Path(workdir))
            for variant in all_variants()
        }
    print(
        f"{args.model.name}: {model_cfg['num_layers']} layers, d_model {model_cfg['d_model']}, "
        f"window {WINDOW_FRAMES} frames, FP16\n"
    )
    print(markdown_table(histograms))


if __name__ == "__main__":
    main()
