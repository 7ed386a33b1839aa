"""Suite-wide settings.

On a GPU backend every test runs under ``jax.default_matmul_precision("highest")``:
NVIDIA GPUs may run float32 matmuls (XLA's and cuDNN's) in TF32, whose 10-bit
mantissa is far outside the float32 tolerances the equivalence tests assert.
A test that means to check the default (TF32) behaviour is marked
``@pytest.mark.default_matmul_precision`` and states its own tolerance. On a
CPU nothing changes (XLA:CPU computes float32 matmuls in float32 either way).

The suite's programs are small and many, so compiling them is most of its time:
XLA:CPU's code generation runs at LLVM's -O0 here
(``--xla_backend_optimization_level=0``), which cut ``tests/test_bptt.py``
from 56 s to 39 s. XLA's HLO passes (fusion, layout, the rewrites the
optimised-HLO tests look at) are unchanged; only the machine code of each
kernel is less optimised. Processes a test starts inherit it unless the test
sets its own ``XLA_FLAGS``; set the flag yourself to run the suite otherwise.

Data: a development checkout's ``../shared/data`` (real MNIST test files) is
named as ``$LSTM_JAX_DATA`` here when it exists and the variable is unset, so
the tests that read it (and the processes they start) find it; on a machine
without it they skip, saying so.
"""

import contextlib
import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # before jax reads XLA_FLAGS
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from lstm_jax.data import paths as _paths  # noqa: E402

if not os.environ.get(_paths.DATA_ENV_VAR) and (_shared := _paths.checkout_shared_data()) is not None:
    os.environ[_paths.DATA_ENV_VAR] = str(_shared)


@pytest.fixture(autouse=True)
def _highest_matmul_precision_on_gpu(request):
    keep_default = request.node.get_closest_marker("default_matmul_precision") is not None
    if jax.default_backend() == "gpu" and not keep_default:
        ctx = jax.default_matmul_precision("highest")
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        yield
