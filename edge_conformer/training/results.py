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
    streaming = any(rates.wer_stream is not None for rates in results.test.values())
    columns = ["test set", "utterances", "WER %", "CER %"]
    if streaming:  # the deployed chunk context beside full context
        columns += ["WER % streaming", "CER % streaming"]
    for column in columns:
        table.add_column(column, justify="right" if column != "test set" else "left")
    for name, rates in results.test.items():
        cells = [name, str(rates.utterances), f"{rates.wer:.2f}", f"{rates.cer:.2f}"]
        if streaming:
            cells += [_percent(rates.wer_stream), _percent(rates.cer_stream)]
        table.add_row(*cells)
    return table


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def print_results(results: RunResults) -> None:
    make_console().print(results_table(results))
