"""Training throughput and peak memory of the S/M/L Conformer-CTC sizes at a fixed batch.

The batch: 8 real LibriSpeech utterances (../shared/data/LibriSpeech) cut to 10 s each, their
80-bin log-mels computed once (the loader's job, not timed here), transcripts tokenized with
a 256-piece SentencePiece model. Each size trains in its own process through our
CTCModule and a Lightning Trainer (CTC loss, AdamW + Noam, gradient clipping), a few steps
after warm-up; it reports audio seconds trained per wall second, the peak memory, and the
model FLOPs of one training step (forward + backward, counted by torch's FlopCounterMode),
which is what the GPU-hours estimate in recipes/librispeech/README.md is built on.

    python benchmarks/train_sizes.py                              # CPU, fp32, S/M/L
    python benchmarks/train_sizes.py --sizes s --steps 3 --threads 2
    python benchmarks/train_sizes.py --accelerator gpu --precision bf16-mixed --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_conformer.data.audio import read_audio  # noqa: E402
from edge_conformer.data.corpora.librispeech import read_split  # noqa: E402
from edge_conformer.data.dataset import collate  # noqa: E402
from edge_conformer.data.features import LogMelFeatures  # noqa: E402
from edge_conformer.data.tokenizer import train_tokenizer  # noqa: E402
from edge_conformer.model import build_model  # noqa: E402
from edge_conformer.training.lit_module import CTCModule  # noqa: E402

LIBRISPEECH = REPO.parent / "shared" / "data" / "LibriSpeech" / "test-other"
SAMPLE_RATE = 16000


def fixed_batch(batch_size: int, seconds: float, tokenizer_dir: Path) -> tuple[dict, object]:
    """`batch_size` real utterances at least `seconds` long (the shortest such), cut to it."""
    utterances = read_split(LIBRISPEECH)
    audio = {u.utt_id: read_audio(u.audio_path, SAMPLE_RATE) for u in utterances}
    long_enough = sorted(((a.numel(), u) for u in utterances
                          if (a := audio[u.utt_id]).numel() >= seconds * SAMPLE_RATE),
                         key=lambda pair: pair[0])  # by length only: utterances don't compare
    if len(long_enough) < batch_size:
        raise SystemExit(f"{LIBRISPEECH}: fewer than {batch_size} utterances of {seconds} s")
    chosen = [u for _, u in long_enough[:batch_size]]
    tokenizer = train_tokenizer([u.text for u in utterances], tokenizer_dir / "bench.model", 256)
    features = LogMelFeatures()
    feats = [features(audio[u.utt_id][: int(seconds * SAMPLE_RATE)]) for u in chosen]
    targets = [torch.tensor(tokenizer.encode(u.text)) + 1 for u in chosen]
    batch = collate(feats, targets, [u.text for u in chosen], [u.utt_id for u in chosen], 0)
    return batch, tokenizer


class StepTimer(L.Callback):
    """Wall time of the steps after `warmup` (synchronised with the device)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = 0.0
        self.timed_steps = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.timed_steps += 1

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def training_step_flops(model: torch.nn.Module, batch: dict) -> int:
    """FLOPs of forward + backward for the first utterance (every one has the same length)."""
    one = {k: v[:1] for k, v in batch.items() if torch.is_tensor(v)}
    counter = FlopCounterMode(display=False)
    with counter:
        logits, _ = model(one["features"], one["feature_lengths"])
        logits.float().log_softmax(-1).sum().backward()
    model.zero_grad()
    return counter.get_total_flops()


def measure(size: str, args) -> dict:
    torch.set_num_threads(args.threads)
    L.seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        batch, tokenizer = fixed_batch(args.batch_size, args.seconds, Path(tmp))
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={size}"])
    model = build_model(cfg.model, tokenizer.vocab_size, 80)
    flops = training_step_flops(model, batch) * args.batch_size
    module = CTCModule(model, tokenizer, optim=OmegaConf.to_container(cfg.optim, resolve=True),
                       test_names=[])
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision,
        max_steps=args.warmup + args.steps, gradient_clip_val=5.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )
    if args.accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    # The same batch every step; batch_size=None: the items are batches already.
    loader = torch.utils.data.DataLoader([batch] * (args.warmup + args.steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    seconds = timer.seconds()
    audio = args.batch_size * args.seconds * timer.timed_steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if args.accelerator == "gpu"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "size": size, "parameters": sum(p.numel() for p in model.parameters()),
        "audio_seconds_per_second": audio / seconds,
        "seconds_per_step": seconds / timer.timed_steps,
        "peak_memory_mib": peak, "memory": "GPU allocated" if args.accelerator == "gpu" else "RSS",
        "train_step_tflop": flops / 1e12,
        "achieved_tflop_per_s": flops * timer.timed_steps / seconds / 1e12,
    }


def table(rows: list[dict], args) -> str:
    lines = [
        f"Fixed batch {args.batch_size} x {args.seconds:g} s real LibriSpeech audio, "
        f"{args.accelerator}, {args.precision}, {args.threads} thread(s), "
        f"{args.steps} timed steps after {args.warmup} warm-up.",
        "",
        "| size | params (M) | audio s / s | s / step | peak memory MiB | "
        "TFLOP / step (fwd+bwd) | achieved TFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['parameters'] / 1e6:.1f} | {r['audio_seconds_per_second']:.2f} | "
            f"{r['seconds_per_step']:.2f} | {r['peak_memory_mib']:.0f} ({r['memory']}) | "
            f"{r['train_step_tflop']:.3f} | {r['achieved_tflop_per_s']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["s", "m", "l"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one size, in its own process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    rows = []
    for size in args.sizes:  # one process per size: its peak memory is its own
        cmd = [sys.executable, __file__, "--child", size, *sys.argv[1:]]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{size} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{size}: {rows[-1]['audio_seconds_per_second']:.2f} audio s/s", file=sys.stderr)
    print(table(rows, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
