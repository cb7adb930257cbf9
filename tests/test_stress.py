"""tools/stress_checkpoint.py's weight surgery: same function, K times larger residual stream."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_conformer.export.stress import scale_residual_stream
from edge_conformer.model import ConformerCTC
from edge_conformer.model.norms import MADNorm

SCALE = 256.0


def trained_looking_model(norm: str) -> ConformerCTC:
    """A random eval-mode model whose norms and BatchNorms are not identities."""
    torch.manual_seed(0)
    model = ConformerCTC(
        vocab_size=16, feat_dim=80, d_model=32, num_heads=2, num_layers=3, conv_kernel_size=7,
        norm=norm, dropout=0.0,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, MADNorm, nn.BatchNorm1d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(std=0.1)
    return model.eval()


def stressed_copy(model: ConformerCTC, norm: str, scale: float) -> ConformerCTC:
    # Lightning checkpoints prefix the model's keys with "model.", as the tool sees them.
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    stressed = scale_residual_stream(state, scale)
    copy = trained_looking_model(norm)
    copy.load_state_dict({key.removeprefix("model."): value for key, value in stressed.items()})
    return copy


def block_inputs_max_abs(model: ConformerCTC, features, lengths) -> tuple[torch.Tensor, list]:
    peaks = []
    hooks = [block.register_forward_pre_hook(lambda m, args: peaks.append(args[0].abs().max()))
             for block in model.blocks]
    with torch.no_grad():
        logits, _ = model(features, lengths)
    for hook in hooks:
        hook.remove()
    return logits, peaks


def without_norm_epsilons(model: ConformerCTC) -> ConformerCTC:
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, MADNorm)):
            module.eps = 0.0
    return model


@pytest.mark.parametrize("norm", ["l2", "mad"])
def test_same_logits_with_a_k_times_larger_residual_stream(norm: str) -> None:
    model = trained_looking_model(norm)
    stressed = stressed_copy(model, norm, SCALE)
    features = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([120, 97])
    logits, _ = block_inputs_max_abs(model, features, lengths)
    stressed_logits, _ = block_inputs_max_abs(stressed, features, lengths)
    # The norms' epsilons are all that sees the scale: next to a K times larger variance (l2)
    # or deviation (mad) they shrink, a small change on this random model's small activations
    # (about 1e-5 on a trained one).
    assert (stressed_logits - logits).abs().max() <= 1e-3
    # Without epsilons the function is exactly the same and every block input exactly K times
    # larger: K = 256 is a power of two, so scaling commutes with rounding, bit for bit.
    exact, peaks = block_inputs_max_abs(without_norm_epsilons(model), features, lengths)
    stressed_exact, stressed_peaks = block_inputs_max_abs(
        without_norm_epsilons(stressed), features, lengths
    )
    torch.testing.assert_close(stressed_exact, exact, rtol=0, atol=0)
    assert stressed_peaks == [SCALE * peak for peak in peaks]


def test_rejects_what_is_not_a_conformer_state_dict() -> None:
    with pytest.raises(ValueError, match="no Conformer blocks"):
        scale_residual_stream({"model.encoder.weight": torch.ones(1)}, SCALE)
    with pytest.raises(ValueError, match="positive"):
        scale_residual_stream({}, 0.0)
