"""Validation WER against training wall time, for runs logged with `logger=csv`.

Each run's CSV log (`<run dir>/<run name>/version_*/metrics.csv`) holds `val/wer` at each
validation and `train/seconds`, the wall time trained so far (validation included). Runs that
share a machine and start together see the same load, so their curves compare fairly.

    python benchmarks/time_to_accuracy.py old=outputs/old new=outputs/new \\
        --out recipes/digits/time_to_accuracy.png
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class Validation:
    step: int
    seconds: float  # training wall time when the validation ran
    wer: float  # percent, as val/wer is logged


def read_validations(run_dir: Path) -> list[Validation]:
    """The validations of the CSV log under `run_dir`, in step order."""
    logs = sorted(run_dir.glob("*/version_*/metrics.csv"))
    if not logs:
        raise SystemExit(f"{run_dir}: no */version_*/metrics.csv (train with logger=csv)")
    seconds_at: dict[int, float] = {}
    wers: dict[int, float] = {}
    with logs[-1].open() as rows:
        for row in csv.DictReader(rows):
            step = int(row["step"])
            if row.get("train/seconds"):
                seconds_at[step] = float(row["train/seconds"])
            if row.get("val/wer"):
                wers[step] = float(row["val/wer"])
    # A validation at step s runs after s steps: the wall time logged at the last step before it.
    return [
        Validation(step, max((t for s, t in seconds_at.items() if s <= step), default=0.0), wer)
        for step, wer in sorted(wers.items())
    ]


def first_below(validations: list[Validation], wer: float) -> Validation | None:
    return next((v for v in validations if v.wer <= wer), None)


def markdown(curves: dict[str, list[Validation]], thresholds: tuple[float, ...]) -> str:
    header = "| run | validations | final val WER % | minutes to final | " + " | ".join(
        f"minutes to val WER <= {t:g} %" for t in thresholds) + " |"
    lines = [header, "|---" * (4 + len(thresholds)) + "|"]
    for label, validations in curves.items():
        final = validations[-1]
        reached = []
        for threshold in thresholds:
            hit = first_below(validations, threshold)
            reached.append(f"{hit.seconds / 60:.1f} (step {hit.step})" if hit else "not reached")
        lines.append(f"| {label} | {len(validations)} | {final.wer:.2f} | "
                     f"{final.seconds / 60:.1f} | " + " | ".join(reached) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, list[Validation]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, validations in curves.items():
        ax.plot([v.seconds / 60 for v in validations], [v.wer for v in validations],
                marker="o", label=label)
    ax.set(xlabel="training wall time, minutes (validation included)",
           ylabel="validation WER %", yscale="log", title="Time to accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("time_to_accuracy.png"))
    parser.add_argument("--thresholds", type=float, nargs="*", default=[10.0, 3.0, 1.5])
    args = parser.parse_args()
    curves = {}
    for spec in args.runs:
        label, _, run_dir = spec.partition("=")
        curves[label] = read_validations(Path(run_dir or label))
    plot(curves, args.out)
    print(markdown(curves, tuple(args.thresholds)))
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
