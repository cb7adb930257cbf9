"""Export a trained checkpoint to an FP16 Core ML package, published only if WER parity holds.

    python export.py ckpt=outputs/<run> out=exports/digits-xs        # the run's tested ckpt
    python export.py "ckpt='outputs/<run>/checkpoints/best-step=700.ckpt'" out=exports/x
    python export.py ckpt=... out=... export.executor=fp16 export.prenormalizer=none

(A path holding "=", as Lightning's checkpoint names do, must be quoted for Hydra as above.)

Writes DIR/model.mlpackage, tokenizer.model, frontend.json, parity.json and parity.md. When
parity fails it exits 1, DIR is left as it was, and the report is in DIR.rejected/.
"""

import os
import sys

# Before anything imports tqdm (it reads its settings then): coremltools draws a tqdm bar per
# conversion pass, and the rich progress display already shows the conversion.
os.environ.setdefault("TQDM_DISABLE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from edge_conformer.console import make_console  # noqa: E402
from edge_conformer.export.pipeline import ExportSettings, export_checkpoint, parity_table  # noqa: E402
from edge_conformer.runtime.bundle import PARITY_MD  # noqa: E402


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    settings = ExportSettings(**OmegaConf.to_container(cfg.export, resolve=True))
    outcome = export_checkpoint(cfg.ckpt, cfg.out, settings)
    console = make_console()
    console.print(parity_table(outcome.report))
    if outcome.passed:
        console.print(f"exported to {outcome.directory}")
        return
    for reason in outcome.report["reasons"]:
        console.print(f"[red]parity failed[/red]: {reason}")
    console.print(f"nothing published; the report is in {outcome.directory / PARITY_MD}")
    sys.exit(1)


if __name__ == "__main__":
    main()
