"""Per-layer activation max-abs: how close the FP32 model runs to FP16's largest value."""

from __future__ import annotations

from torch import nn

from edge_conformer.numerics.formats import FP16


class ActivationMaxAbs:
    """Forward hooks that record max |output| of the subsampling front and of every block.

    Recording is switched on only for the steps that get logged, so the hooks cost nothing
    on the others.
    """

    def __init__(self, model: nn.Module) -> None:
        self.enabled = False
        self.values: dict[str, float] = {}
        layers = {"subsampling": model.subsampling}
        layers.update({f"block_{i:02d}": block for i, block in enumerate(model.blocks)})
        for name, layer in layers.items():
            layer.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def record(module: nn.Module, inputs, output) -> None:
            if self.enabled:
                tensor = output[0] if isinstance(output, tuple) else output
                self.values[name] = float(tensor.detach().abs().amax())
        return record

    def metrics(self) -> dict[str, float]:
        """Logged as act_maxabs/<layer>, plus the overall maximum and the FP16 headroom."""
        if not self.values:
            return {}
        peak = max(self.values.values())
        out = {f"act_maxabs/{k}": v for k, v in self.values.items()}
        out["act_maxabs/max"] = peak
        out["act_maxabs/fp16_headroom"] = FP16.max_finite / max(peak, 1e-30)
        return out
