"""Suite-wide settings.

On a GPU backend every test runs under ``jax.default_matmul_precision("highest")``:
NVIDIA GPUs may run float32 matmuls (XLA's and cuDNN's) in TF32, whose 10-bit
mantissa is far outside the float32 tolerances the equivalence tests assert.
A test that means to check the default (TF32) behaviour is marked
``@pytest.mark.default_matmul_precision`` and states its own tolerance. On a
CPU nothing changes (XLA:CPU computes float32 matmuls in float32 either way).
"""

import contextlib

import jax
import pytest


@pytest.fixture(autouse=True)
def _highest_matmul_precision_on_gpu(request):
    keep_default = request.node.get_closest_marker("default_matmul_precision") is not None
    if jax.default_backend() == "gpu" and not keep_default:
        ctx = jax.default_matmul_precision("highest")
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        yield
