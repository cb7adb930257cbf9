"""results.json for every run, and the table printed at its end."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from edge_conformer.console import make_console


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def results_table(results: dict) -> Table:
    variant = results["variant"]
    title = (f"{variant['size']} / subsampling={variant['subsampling']} / norm={variant['norm']}"
             f" — {results['parameters'] / 1e6:.2f}M params, {results['train_steps']} steps,"
             f" {results['train_wall_seconds'] / 60:.1f} min")
    table = Table(title=title)
    for column in ("test set", "utterances", "WER %", "CER %"):
        table.add_column(column, justify="right" if column != "test set" else "left")
    for name, rates in results["test"].items():
        table.add_row(name, str(rates["utterances"]), f"{rates['wer']:.2f}", f"{rates['cer']:.2f}")
    return table


def print_results(results: dict) -> None:
    make_console().print(results_table(results))
