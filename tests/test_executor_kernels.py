"""Regression: MIL programs store reduce ops' keep_dims as NumPy bools, which NumPy rejects."""

from __future__ import annotations

import numpy as np
import pytest

from edge_conformer.mil.fp16 import Numerics
from edge_conformer.mil.kernels import KERNELS


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("op_type", ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min",
                                     "reduce_sum_square", "reduce_l2_norm"])
def test_reductions_take_numpy_bool_keep_dims(op_type: str, strict: bool) -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    kernel = KERNELS[op_type]
    kept = kernel(Numerics(strict_fp16=strict), x, axes=[1], keep_dims=np.bool_(True))
    dropped = kernel(Numerics(strict_fp16=strict), x, axes=[1], keep_dims=np.bool_(False))
    assert kept.shape == (2, 1, 2) and dropped.shape == (2, 2)


def test_arg_reductions_take_numpy_bool_keep_dims() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    indices = KERNELS["reduce_argmax"](Numerics(strict_fp16=False), x, axis=1,
                                       keep_dims=np.bool_(True))
    assert indices.shape == (2, 1) and indices.ravel().tolist() == [2, 2]
