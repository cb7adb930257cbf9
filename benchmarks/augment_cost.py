"""Cost of each waveform augmentation per utterance, one thread, on the digits corpus' audio.

    OMP_NUM_THREADS=1 python benchmarks/augment_cost.py [--data-dir data/digits]

Times each stage of conf/data/digits.yaml's `data.augment` alone (its prob forced to 1) on the
first 200 training utterances, and the log-mel front end on the same audio for scale. Speed
perturbation is timed per factor after a warm-up, as the loader runs it: with its kernel built.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from edge_conformer.data.augment import AugmentSettings, SpeedSettings, WaveformAugment
from edge_conformer.data.dataset import load_cut_audio
from edge_conformer.data.features import FeatureSettings, LogMelFeatures
from edge_conformer.data.manifests import load_cuts

REPO = Path(__file__).resolve().parents[1]


def ms_per_call(fn, waves: list[torch.Tensor], rounds: int = 3) -> float:
    """Best of `rounds` mean milliseconds per utterance."""
    best = float("inf")
    for r in range(rounds):
        gen = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        for wave in waves:
            fn(wave, gen)
        best = min(best, (time.perf_counter() - start) / len(waves) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO / "data" / "digits"))
    parser.add_argument("--utterances", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        data = compose("train").data
    settings = AugmentSettings.from_config(OmegaConf.to_container(data.augment))
    front_end = LogMelFeatures(FeatureSettings(**OmegaConf.to_container(data.features)))
    cuts = load_cuts(Path(args.data_dir) / "cuts_train.jsonl.gz").subset(first=args.utterances)
    waves = [load_cut_audio(cut, front_end.sample_rate) for cut in cuts]
    seconds = sum(len(w) for w in waves) / front_end.sample_rate / len(waves)
    print(f"{len(waves)} utterances, mean {seconds:.2f} s, {torch.get_num_threads()} thread")
    print("| stage | ms per utterance |\n|---|---|")
    print(f"| log-mel features (for scale) | {ms_per_call(front_end, waves):.2f} |")
    stages = {f"speed x{f}": AugmentSettings(speed=SpeedSettings(factors=(f,), prob=1.0))
              for f in settings.speed.factors if f != 1.0}
    stage_configs = OmegaConf.to_container(data.augment)
    for name in ("eq", "reverb", "noise", "gain"):
        if stage_configs.get(name):  # in the recipe, also at prob 0 (the equaliser)
            stages[name] = AugmentSettings.from_config({name: {**stage_configs[name], "prob": 1.0}})
    stages["all, as configured (each with its prob)"] = settings
    for name, stage_settings in stages.items():
        augment = WaveformAugment(stage_settings, front_end.sample_rate)
        augment(waves[0], torch.Generator())  # builds resampling kernels
        print(f"| {name} | {ms_per_call(augment, waves):.2f} |")


if __name__ == "__main__":
    main()
