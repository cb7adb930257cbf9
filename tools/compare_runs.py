"""Compare training runs (and their exports) side by side, offline: no W&B server needed.

    python tools/compare_runs.py multirun/sweep                  # a whole Hydra sweep
    python tools/compare_runs.py outputs/run-a outputs/run-b exports/ --out reports/

Every DIR is searched recursively for `results.json` (one per training run) and `parity.json`
(one per export, from export.py). An export belongs to the run whose directory holds it or
holds the checkpoint it was made from; a run with several exports shows the newest. A run's
W&B id and group come from its own directory (wandb_run_id.txt, and the W&B logger's group in
.hydra/config.yaml): W&B is written to, never read. Writes `comparison.md` (one row per run:
variant, parameters, test WERs, training throughput, FP32 vs FP16 WER and identical share,
package size) and `comparison.png` (WER vs parameters, and FP32 vs FP16 WER per variant) into
--out (default: the first DIR).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from omegaconf import OmegaConf

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_conformer.errors import exit_on_user_input_error  # noqa: E402
from edge_conformer.records import (  # noqa: E402
    PARITY_JSON,
    RESULTS_JSON,
    ExportReport,
    RunResults,
    SetParity,
    read_run_id,
)

HYDRA_CONFIG = Path(".hydra") / "config.yaml"  # the config Hydra saved in the run directory


@dataclass
class Run:
    results: RunResults
    run_dir: Path
    parity: ExportReport | None = None  # the newest export's report
    wandb_id: str | None = None
    wandb_group: str | None = None

    @property
    def variant(self) -> str:
        return str(self.results.variant)

    def wer(self, test_set: str) -> float | None:
        rates = self.results.test.get(test_set)
        return None if rates is None else rates.wer

    def parity_of(self, test_set: str) -> SetParity | None:
        return None if self.parity is None else self.parity.windowed.test_sets.get(test_set)


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run under `dirs`, each with its newest export's parity report if there is one."""
    runs = {p.parent.resolve(): _read_run(p.parent.resolve())
            for d in dirs for p in sorted(Path(d).rglob(RESULTS_JSON))}
    parity_files = {p.resolve() for d in dirs for p in Path(d).rglob(PARITY_JSON)}
    for path in sorted(parity_files, key=lambda p: p.stat().st_mtime):
        report = ExportReport.read(path)
        run = _owner(runs, path, Path(report.checkpoint))
        if run is not None:
            run.parity = report  # newer exports overwrite older ones
    return sorted(runs.values(), key=lambda r: (r.variant, str(r.run_dir)))


def _read_run(run_dir: Path) -> Run:
    return Run(
        results=RunResults.read(run_dir / RESULTS_JSON),
        run_dir=run_dir,
        wandb_id=read_run_id(run_dir),
        wandb_group=wandb_group(run_dir),
    )


def wandb_group(run_dir: Path) -> str | None:
    """The W&B group the run logged under (conf/logger/wandb.yaml: the sweep's name)."""
    config_file = run_dir / HYDRA_CONFIG
    if not config_file.is_file():
        return None
    group = OmegaConf.select(OmegaConf.load(config_file), "logger.group", default=None)
    return None if group is None else str(group)


def _owner(runs: dict[Path, Run], parity_path: Path, checkpoint: Path) -> Run | None:
    for candidate in (parity_path, checkpoint):
        for parent in candidate.resolve().parents:
            if parent in runs:
                return runs[parent]
    return None


def test_set_names(runs: list[Run]) -> list[str]:
    """Test set names in first-seen order across runs."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.results.test))
    return list(names)


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def _parity_cell(run: Run, test_set: str) -> str:
    result = run.parity_of(test_set)
    if result is None:
        return "–"
    return f"{result.wer_fp32:.2f} / {result.wer_fp16:.2f} ({100 * result.identical:.0f}%)"


def _package_mb(run: Run) -> float | None:
    return None if run.parity is None else run.parity.package_bytes / 2**20


def _parity_verdict(run: Run) -> str:
    if run.parity is None:
        return "not exported"
    return "passed" if run.parity.passed else "FAILED"


def _wandb_cell(run: Run) -> str:
    if run.wandb_id is None:
        return "–"
    return f"{run.wandb_id} ({run.wandb_group})" if run.wandb_group else run.wandb_id


def markdown_table(runs: list[Run]) -> str:
    names = test_set_names(runs)
    header = ["run", "W&B run (group)", "size", "subsampling", "norm", "params (M)", "steps",
              *[f"WER {n} %" for n in names], "train audio s/s",
              *[f"FP32 / FP16 WER {n} % (identical)" for n in names], "parity", "package MB"]
    rows = []
    for run in runs:
        r, v = run.results, run.results.variant
        rows.append([
            run.run_dir.name, _wandb_cell(run), v.size, v.subsampling, v.norm,
            f"{r.parameters / 1e6:.2f}", str(r.train_steps),
            *[_num(run.wer(n)) for n in names], _num(r.audio_seconds_per_second, "{:.1f}"),
            *[_parity_cell(run, n) for n in names], _parity_verdict(run),
            _num(_package_mb(run), "{:.1f}"),
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], test_set: str, path: Path) -> None:
    """Left: test WER against parameter count. Right: FP32 vs FP16 (package) WER per run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for run in runs:
        wer = run.wer(test_set)
        if wer is None:
            continue
        params = run.results.parameters / 1e6
        left.scatter(params, wer, s=40)
        left.annotate(run.variant, (params, wer), textcoords="offset points", xytext=(4, 4),
                      fontsize=8)
    left.set(xlabel="parameters (M)", ylabel=f"WER % ({test_set})", title="WER vs parameters")
    left.grid(alpha=0.3)

    labels = [run.variant for run in runs]
    exported = [run.parity_of(test_set) for run in runs]
    fp32 = [run.wer(test_set) if e is None else e.wer_fp32 for run, e in zip(runs, exported)]
    fp16 = [None if e is None else e.wer_fp16 for e in exported]
    x = range(len(runs))
    right.bar([i - 0.2 for i in x], [w or 0 for w in fp32], width=0.4, label="FP32 (PyTorch model)")
    right.bar([i + 0.2 for i in x], [w or 0 for w in fp16], width=0.4,
              label="FP16 (Core ML package)")
    for i, (run, value) in enumerate(zip(runs, fp16)):
        if value is None:
            right.annotate("not exported", (i + 0.2, 0), rotation=90, fontsize=7,
                           ha="center", va="bottom")
        elif not run.parity.passed:
            right.annotate("parity\nFAILED", (i + 0.2, value), fontsize=7, color="red",
                           ha="center", va="bottom")
    right.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    right.set(ylabel=f"WER % ({test_set})", title="FP32 vs FP16 WER per variant")
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(dirs: list[Path], out: Path, test_set: str | None = None) -> tuple[Path, Path]:
    """Write comparison.md and comparison.png for the runs under `dirs` into `out`."""
    runs = find_runs(dirs)
    if not runs:
        raise SystemExit(f"no results.json under {', '.join(map(str, dirs))}")
    test_set = test_set or test_set_names(runs)[0]
    out.mkdir(parents=True, exist_ok=True)
    table, picture = out / "comparison.md", out / "comparison.png"
    table.write_text(f"# Run comparison ({len(runs)} runs)\n\n" + markdown_table(runs)
                     + "\nFP32 / FP16 WER: the training graph vs the exported package on the"
                     " same utterances (export.py's parity.json); identical: share of utterances"
                     " with the same transcript.\n")
    plot(runs, test_set, picture)
    return table, picture


@exit_on_user_input_error  # an unreadable record: one line naming it, exit 1
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run, sweep or export directories")
    parser.add_argument("--out", type=Path, help="where to write (default: the first DIR)")
    parser.add_argument("--test-set", help="test set of the plots (default: the first one)")
    args = parser.parse_args()
    table, picture = compare(args.dirs, args.out or args.dirs[0], args.test_set)
    print(table.read_text())
    print(f"wrote {table} and {picture}")


if __name__ == "__main__":
    main()
