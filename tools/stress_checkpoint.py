"""Write a checkpoint with the same FP32 function but a K times larger residual stream.

    python tools/stress_checkpoint.py IN.ckpt OUT.ckpt --scale 256
    python export.py ckpt=OUT.ckpt out=exports/stressed        # must still pass parity

Scales the subsampling output and every block branch's last projection by K (the norms absorb
it) and every block's final norm by K; the CTC head undoes the last (see
edge_conformer/export/stress.py). IN may also be a training run directory. OUT is meant for
export checks, not for further training: the optimizer state still refers to the old weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edge_conformer.errors import exit_on_user_input_error
from edge_conformer.export.stress import scale_residual_stream
from edge_conformer.runtime.checkpoint import read_checkpoint, resolve_checkpoint


@exit_on_user_input_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint (.ckpt) or training run directory")
    parser.add_argument("target", type=Path, help="the stressed checkpoint to write")
    parser.add_argument("--scale", type=float, required=True, help="K, e.g. 256")
    args = parser.parse_args()

    source = resolve_checkpoint(args.source)
    checkpoint = read_checkpoint(source)
    checkpoint["state_dict"] = scale_residual_stream(checkpoint["state_dict"], args.scale)
    checkpoint.setdefault("edge_conformer", {})["stress_scale"] = args.scale
    args.target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.target)
    print(f"{args.target}: residual stream x{args.scale:g} (from {source})")


if __name__ == "__main__":
    main()
