"""The table printed at the end of every run, from its results.json record."""

from __future__ import annotations

from rich.table import Table

from edge_conformer.console import make_console
from edge_conformer.records import RunResults


def results_table(results: RunResults) -> Table:
    variant = results.variant
    title = (f"{variant.size} / subsampling={variant.subsampling} / norm={variant.norm}"
             f" — {results.parameters / 1e6:.2f}M params, {results.train_steps} steps,"
             f" {results.train_wall_seconds / 60:.1f} min")
    table = Table(title=title)
    for column in ("test set", "utterances", "WER %", "CER %"):
        table.add_column(column, justify="right" if column != "test set" else "left")
    for name, rates in results.test.items():
        table.add_row(name, str(rates.utterances), f"{rates.wer:.2f}", f"{rates.cer:.2f}")
    return table


def print_results(results: RunResults) -> None:
    make_console().print(results_table(results))
