"""Export a trained checkpoint to an FP16 Core ML package, published only if WER parity holds.

    python export.py ckpt=outputs/<run> out=exports/digits-xs        # the run's tested ckpt
    python export.py "ckpt='outputs/<run>/checkpoints/best-step=700.ckpt'" out=exports/x
    python export.py ckpt=... out=... export.executor=fp16 export.prenormalizer=none
    python export.py ckpt=... out=... export.compress=auto   # the smallest package that passes
    python export.py ckpt=... out=... decode.beam_size=8 decode.lexicon=data/digits/lm/lexicon.txt
                                      # beam-search WERs beside the gate's greedy ones

(A path holding "=", as Lightning's checkpoint names do, must be quoted for Hydra as above.)

Writes DIR/model.mlpackage, tokenizer.model, frontend.json, parity.json and parity.md, and
stream.mlpackage when the model streams (export.streaming); export.compress gates compressed
weights the same way (docs/export.md). When parity fails (either package's) it exits 1, DIR
is left as it was, and the report is in DIR.rejected/. DIR must be new or an earlier export
(it holds .edge-conformer-export): any other directory is refused.
"""

import os
import sys
from pathlib import Path

# Before anything imports tqdm (it reads its settings then): coremltools draws a tqdm bar per
# conversion pass, and the rich progress display already shows the conversion.
os.environ.setdefault("TQDM_DISABLE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from edge_conformer.config.entry import check_command_line  # noqa: E402
from edge_conformer.errors import exit_on_user_input_error  # noqa: E402

CONF_DIR = Path(__file__).parent / "conf"


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
@exit_on_user_input_error  # a bad ckpt or out: one line naming it, exit 1
def main(cfg: DictConfig) -> None:
    # torch and coremltools: only once the config has passed its checks.
    from edge_conformer.console import make_console
    from edge_conformer.export.pipeline import export_checkpoint, parity_tables
    from edge_conformer.runtime.bundle import PARITY_MD

    settings = OmegaConf.to_object(cfg.export)  # ExportSettings (edge_conformer/config)
    decode = OmegaConf.to_object(cfg.decode)  # DecodeSettings: beam WERs beside greedy's
    outcome = export_checkpoint(cfg.ckpt, cfg.out, settings, decode=decode)
    console = make_console()
    console.print(parity_tables(outcome.report))
    if outcome.passed:
        console.print(f"exported to {outcome.directory}")
        return
    for reason in outcome.report.reasons:
        console.print(f"[red]parity failed[/red]: {reason}")
    console.print(f"nothing published; the report is in {outcome.directory / PARITY_MD}")
    sys.exit(1)


if __name__ == "__main__":
    check_command_line(CONF_DIR, "export")
    main()
