"""Training throughput: our full pipeline vs a plain PyTorch loop over torchaudio's Conformer.

Ours: Lightning Trainer + CTCModule + SpeechDataModule (features in the loader, bucketing,
logging, activation probes), exactly as train.py runs it. Plain: a hand-written loop over
`torchaudio.models.Conformer` of the same dimensions, with the same subsampling front and CTC
head, fed the very same batches (the same DataLoader). Each runs in its own process so peak
memory is its own; rounds alternate to cancel drift on a shared machine.

    python benchmarks/train_throughput.py                 # S model, digits audio
    python benchmarks/train_throughput.py --model xs --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchaudio
from hydra import compose, initialize_config_dir
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_conformer.model.subsampling import ConvSubsampling  # noqa: E402
from edge_conformer.training.run import build_datamodule, build_module  # noqa: E402


def load_config(model: str, max_duration: float, steps: int):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[
            f"model={model}", f"data.max_duration={max_duration}", "~logger",
            f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
            "trainer.val_check_interval=null", "+trainer.limit_val_batches=0",
        ])


class PlainConformerCTC(nn.Module):
    """Our subsampling front + torchaudio's Conformer + a linear CTC head."""

    def __init__(self, cfg, vocab_size: int, n_mels: int) -> None:
        super().__init__()
        d_model = cfg.model.d_model
        self.subsampling = ConvSubsampling(cfg.model.subsampling, n_mels, d_model, d_model)
        self.encoder = torchaudio.models.Conformer(
            input_dim=d_model, num_heads=cfg.model.num_heads, ffn_dim=cfg.model.ffn_mult * d_model,
            num_layers=cfg.model.num_layers,
            depthwise_conv_kernel_size=cfg.model.conv_kernel_size, dropout=cfg.model.dropout,
        )
        self.head = nn.Linear(d_model, vocab_size + 1)

    def forward(self, features, lengths):
        x, lengths = self.subsampling(features, lengths)
        x, lengths = self.encoder(x, lengths)
        return self.head(x), lengths


class ThroughputProbe(L.Callback):
    """Audio seconds trained per wall second over the steps after warm-up."""

    def __init__(self, warmup: int, seconds_per_frame: float) -> None:
        self.warmup = warmup
        self.seconds_per_frame = seconds_per_frame
        self.audio_seconds = 0.0
        self.started = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.record(trainer.global_step, batch)

    def record(self, step: int, batch: dict) -> None:
        if step == self.warmup:
            self.started = time.perf_counter()
        elif step > self.warmup:
            self.audio_seconds += float(batch["feature_lengths"].sum()) * self.seconds_per_frame

    def result(self) -> float:
        return self.audio_seconds / (time.perf_counter() - self.started)


def seconds_per_frame(datamodule) -> float:
    return 1 / datamodule.features.settings.frames_per_second


def run_ours(cfg, warmup: int) -> float:
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    probe = ThroughputProbe(warmup, seconds_per_frame(datamodule))
    trainer = L.Trainer(**cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[probe])
    trainer.fit(module, datamodule=datamodule)
    return probe.result()


def run_plain(cfg, warmup: int) -> float:
    datamodule = build_datamodule(cfg)
    model = PlainConformerCTC(cfg, datamodule.tokenizer.vocab_size, datamodule.features.n_mels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(0.9, 0.98))
    probe = ThroughputProbe(warmup, seconds_per_frame(datamodule))
    model.train()
    step = 0
    for batch in datamodule.train_dataloader():
        logits, lengths = model(batch["features"], batch["feature_lengths"])
        log_probs = logits.log_softmax(-1).transpose(0, 1)
        loss = F.ctc_loss(log_probs, batch["targets"], lengths, batch["target_lengths"],
                          zero_infinity=True)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        step += 1
        probe.record(step, batch)
        if step == cfg.trainer.max_steps:
            break
    return probe.result()


def child(args) -> None:
    L.seed_everything(0)
    cfg = load_config(args.model, args.max_duration, args.warmup + args.steps)
    runner = run_ours if args.impl == "ours" else run_plain
    throughput = runner(cfg, args.warmup)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": args.impl, "audio_seconds_per_second": throughput,
                      "peak_rss_mib": peak_mib}))


def parent(args) -> None:
    runs = {"ours": [], "plain": []}
    for _ in range(args.rounds):
        for impl in ("plain", "ours"):
            cmd = [sys.executable, __file__, "--impl", impl, "--model", args.model,
                   "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--max-duration", str(args.max_duration)]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
            runs[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rate = {k: statistics.median(r["audio_seconds_per_second"] for r in v) for k, v in runs.items()}
    peak = {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()}
    print(f"| pipeline | audio s / s (median of {args.rounds}) | peak RSS MiB |")
    print("|---|---|---|")
    for impl in ("ours", "plain"):
        print(f"| {impl} | {rate[impl]:.1f} | {peak[impl]:.0f} |")
    print(f"\nratio ours / plain = {rate['ours'] / rate['plain']:.3f} "
          f"(model {args.model}, {args.max_duration:g} s batches, {args.steps} timed steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-duration", type=float, default=60.0)
    parser.add_argument("--impl", choices=("ours", "plain"))
    args = parser.parse_args()
    child(args) if args.impl else parent(args)


if __name__ == "__main__":
    main()
