"""Two GPU questions the first H200 run left open, answered in one short process.

1. ``impl="cudnn"`` with ``lengths`` and ``reverse=True`` disagreed with ``scan``
   (tests/test_cudnn.py) while the same case through jax's reference kernel
   agreed: compare cuDNN's kernel with the reference kernel on the *same*
   flipped inputs, eagerly and under ``jit``, row by row, and with the batch
   sorted by length.
2. Where the time of ``manual``'s training step goes at FlashRNN's
   configuration (T=1024, B=16, I=H=768), by difference: the whole
   ``value_and_grad`` step, the forward alone, and a bare ``lax.scan`` of the
   recurrent matmul ``h @ w_h`` only (the floor any sequential XLA loop pays
   per step), each the median of a few calls.

    python -m experiments.benchmarks.gpu_diagnose --out runs/gpu_diagnose.json      # any backend; part 1 needs a GPU
"""

from __future__ import annotations

import json
import statistics
import time


import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import cli
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.impls.cudnn import cudnn_kernel, reference_kernel, to_cudnn_weights
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry
from lstm_jax.sequence import flip_within_lengths


def _rows(a, b):
    return [float(np.max(np.abs(np.asarray(a)[i] - np.asarray(b)[i]))) for i in range(a.shape[0])]


def cudnn_reverse_lengths(report):
    key = jax.random.PRNGKey(0)
    T, B, I, H = 7, 4, 3, 5
    params = init_stack(key, "lstm", I, H)[0]
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    carry = jax.tree_util.tree_map(lambda z: 0.5 + 0 * z, zeros_stack_carry("lstm", [params], (B,))[0])
    lengths = jnp.array([7, 3, 0, 1])
    out = {}
    with jax.default_matmul_precision("highest"):
        for reverse in (False, True):
            ref = layer_impl("scan")("lstm", params, xs, carry, lengths=lengths, reverse=reverse)[0]
            got = layer_impl("cudnn")("lstm", params, xs, carry, lengths=lengths, reverse=reverse)[0]
            out[f"impl_reverse={reverse}_row_maxdiff"] = _rows(got, ref)
        xf = flip_within_lengths(xs, lengths)
        args = (carry.hidden[None], carry.cell[None], to_cudnn_weights(params), jnp.maximum(lengths, 1), I, H)
        r = reference_kernel(xf, *args)[0]
        out["kernel_eager_flipped_row_maxdiff"] = _rows(cudnn_kernel(xf, *args)[0], r)
        out["kernel_eager_materialised_row_maxdiff"] = _rows(cudnn_kernel(jnp.asarray(np.asarray(xf)), *args)[0], r)
        jitted = jax.jit(lambda x: cudnn_kernel(flip_within_lengths(x, lengths), *args)[0])
        out["kernel_jit_flip_inside_row_maxdiff"] = _rows(jitted(xs), r)
        out["kernel_eager_unflipped_row_maxdiff"] = _rows(cudnn_kernel(xs, *args)[0], reference_kernel(xs, *args)[0])
    report["cudnn_reverse_lengths"] = out


def _median_ms(fn, *args, n=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def manual_step_breakdown(report, T=1024, B=16, I=768, H=768):
    key = jax.random.PRNGKey(0)
    params = init_stack(key, "lstm", I, H)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    out = {"T": T, "B": B, "I": I, "H": H}
    for precision in ("fp32", "bf16"):
        impl = layer_impl("manual", precision=precision)

        def loss(p, x):
            return jnp.mean(apply_stack("lstm", p, x, impl=impl)[0] ** 2)

        out[f"{precision}_step_ms"] = _median_ms(jax.jit(jax.value_and_grad(loss)), params, xs)
        out[f"{precision}_forward_ms"] = _median_ms(jax.jit(loss), params, xs)
    w_h = params[0]["w_h"]

    def recurrent_only(w, h0):
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w[:, :H]), None), h0, None, length=T)[0]

    out["bare_recurrent_matmul_scan_ms"] = _median_ms(jax.jit(recurrent_only), w_h, jnp.zeros((B, H)))
    out["per_step_us_bare_scan"] = 1e3 * out["bare_recurrent_matmul_scan_ms"] / T
    out["per_step_us_fp32_step"] = 1e3 * out["fp32_step_ms"] / T
    report["manual_breakdown"] = out


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True)
    p.add_argument("--out", default="runs/gpu_diagnose.json")
    p.add_argument("--quick", action="store_true", help="small breakdown sizes (a CPU dry run)")
    return p


def diagnose(args):
    report = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    if IMPLS["cudnn"].unavailable() is None:
        cudnn_reverse_lengths(report)
    sizes = dict(T=16, B=2, I=8, H=8) if args.quick else {}
    manual_step_breakdown(report, **sizes)
    text = json.dumps(report, indent=1)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


def main(argv=None):
    return cli.run(build_parser(), diagnose, argv)


if __name__ == "__main__":
    main()
