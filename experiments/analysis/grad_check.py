"""Check the hand-derived BPTT (lstm_jax.bptt) against jax.grad, in float64.

For each cell (rnn, lstm, gru), a few shapes (T=1, long T, batch 1, 2-layer,
bidirectional, padded with lengths) and the two losses the seed notebooks use:

* ``ce``:  per-step softmax cross-entropy through a linear readout (a char
  model: one-hot characters in, next-character logits out), averaged over
  the real (unpadded) steps;
* ``mse``: squared error on the final hidden state, ``0.5 * mean_b ||h_T - target||²``
  (last layer; both directions if bidirectional),

this prints the max absolute and relative error of the manual gradient vs
``jax.grad`` for every parameter, the inputs and the initial carry, and exits
with status 1 if any relative error exceeds ``--tol``.

The loss heads are differentiated by hand too (softmax-CE: ``dlogits = p - onehot``),
so the manual path never calls jax.grad.

    python -m experiments.analysis.grad_check            # full set
    python -m experiments.analysis.grad_check --quick    # fewer, smaller shapes
    python -m experiments.analysis.grad_check --summary  # one line (worst parameter) per case
"""

from __future__ import annotations

import sys


import jax
import jax.numpy as jnp

from experiments.common import cli
from lstm_jax import bptt
from lstm_jax.cells import LSTMCarry
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry

# (name, batch, time, input/vocab, hidden, layers, bidirectional, padded)
SHAPES = [
    ("T=1", 3, 1, 5, 4, 1, False, False),
    ("batch=1", 1, 12, 5, 6, 1, False, False),
    ("B4,T20", 4, 20, 6, 8, 1, False, False),
    ("T=200", 2, 200, 5, 8, 1, False, False),
    ("2-layer,padded", 3, 16, 5, 6, 2, False, True),
    ("bidir,padded", 3, 10, 4, 5, 1, True, True),
    ("2-layer,bidir", 2, 9, 4, 5, 2, True, False),
]
QUICK = ["T=1", "B4,T20", "2-layer,padded", "bidir,padded"]


def make_problem(cell, shape, seed=0):
    _, batch, seq_len, vocab, hidden, layers, bidir, padded = shape
    k = jax.random.split(jax.random.PRNGKey(seed), 8)
    params = init_stack(k[0], cell, vocab, hidden, num_layers=layers, bidirectional=bidir, dtype=jnp.float64)
    # Perturb the biases so no term of the derivative is trivially zero.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(k[1], p.shape, p.dtype), params
    )
    tokens = jax.random.randint(k[2], (batch, seq_len + 1), 0, vocab)
    xs = jax.nn.one_hot(tokens[:, :-1], vocab, dtype=jnp.float64)
    # Make xs non-binary too, so dL/dxs is tested at a generic point.
    xs = xs + 0.1 * jax.random.normal(k[3], xs.shape, xs.dtype)
    carry = jax.tree_util.tree_map(
        lambda c: 0.5 * jax.random.normal(k[4], c.shape, c.dtype), zeros_stack_carry(cell, params, (batch,))
    )
    out = hidden * (2 if bidir else 1)
    readout = {
        "w": jax.random.normal(k[5], (out, vocab), jnp.float64) / jnp.sqrt(out),
        "b": 0.1 * jax.random.normal(k[6], (vocab,), jnp.float64),
    }
    lengths = None
    if padded:
        lengths = jnp.array([seq_len] + [max(0, seq_len - 3 - 4 * i) for i in range(batch - 1)])
        lengths = lengths.at[-1].set(max(1, seq_len // 3)) if batch > 2 else lengths
    target = jax.random.normal(k[7], (batch, out), jnp.float64)
    return params, xs, carry, tokens[:, 1:], lengths, readout, target


def _step_mask(lengths, batch, seq_len):
    if lengths is None:
        return jnp.ones((batch, seq_len), jnp.float64)
    return (jnp.arange(seq_len)[None, :] < lengths[:, None]).astype(jnp.float64)


def _final_hidden(finals):
    last = finals[-1]
    pick = lambda c: c.hidden if isinstance(c, LSTMCarry) else c  # noqa: E731
    if isinstance(last, dict):
        return jnp.concatenate([pick(last["forward"]), pick(last["backward"])], -1)
    return pick(last)


def loss_autodiff(cell, loss, params, xs, carry, readout, targets, lengths, target):
    ys, finals = apply_stack(cell, params, xs, carry, lengths=lengths)
    if loss == "ce":
        logits = ys @ readout["w"] + readout["b"]
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        mask = _step_mask(lengths, *targets.shape)
        return jnp.sum(nll * mask) / jnp.maximum(mask.sum(), 1.0)
    h = _final_hidden(finals)
    return 0.5 * jnp.sum((h - target) ** 2) / h.shape[0]


def grads_manual(cell, loss, params, xs, carry, readout, targets, lengths, target):
    """Manual forward + hand-derived loss head + :func:`bptt.stack_backward`."""
    ys, finals, cache = bptt.stack_forward(cell, params, xs, carry, lengths=lengths)
    d_readout = None
    dys = None
    dfinals = [None] * len(params)
    if loss == "ce":
        logits = ys @ readout["w"] + readout["b"]
        probs = jax.nn.softmax(logits)
        mask = _step_mask(lengths, *targets.shape)
        # d(mean masked NLL)/dlogits = (softmax - onehot) * mask / N
        dlogits = (probs - jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
        dlogits = dlogits * (mask / jnp.maximum(mask.sum(), 1.0))[..., None]
        dys = dlogits @ readout["w"].T
        flat_y, flat_d = ys.reshape(-1, ys.shape[-1]), dlogits.reshape(-1, dlogits.shape[-1])
        d_readout = {"w": flat_y.T @ flat_d, "b": flat_d.sum(0)}
    else:
        h = _final_hidden(finals)
        dh = (h - target) / h.shape[0]
        last = finals[-1]

        def as_carry(c, d):
            return LSTMCarry(hidden=d, cell=jnp.zeros_like(d)) if isinstance(c, LSTMCarry) else d

        if isinstance(last, dict):
            hid = dh.shape[-1] // 2
            dfinals[-1] = {
                "forward": as_carry(last["forward"], dh[:, :hid]),
                "backward": as_carry(last["backward"], dh[:, hid:]),
            }
        else:
            dfinals[-1] = as_carry(last, dh)
    g = bptt.stack_backward(cache, dys, dfinals)
    return g.params, g.xs, g.carry, d_readout


_autodiff_grads = jax.jit(jax.grad(loss_autodiff, argnums=(2, 3, 4, 5)), static_argnums=(0, 1))
_manual_grads = jax.jit(grads_manual, static_argnums=(0, 1))


def compare(tree_m, tree_a, prefix):
    rows = []
    flat_a, _ = jax.tree_util.tree_flatten_with_path(tree_a)
    flat_m = jax.tree_util.tree_leaves(tree_m)
    if len(flat_a) != len(flat_m):
        raise AssertionError(f"{prefix}: manual has {len(flat_m)} leaves, autodiff {len(flat_a)}")
    for (path, a), m in zip(flat_a, flat_m):
        abs_err = float(jnp.max(jnp.abs(m - a))) if a.size else 0.0
        scale = float(jnp.max(jnp.abs(a))) if a.size else 0.0
        rel = abs_err / scale if scale > 0 else abs_err
        rows.append((prefix + jax.tree_util.keystr(path), abs_err, rel))
    return rows


def build_parser():
    p = cli.make_parser(__doc__)
    cli.add_flag(p, "quick", help="fewer, smaller shapes")
    p.add_argument("--tol", type=float, default=1e-9, help="max relative error allowed")
    cli.add_flag(p, "cells", default=["rnn", "lstm", "gru"])
    p.add_argument("--summary", action="store_true", help="one line per case (its worst parameter), not every parameter")
    return p


def grad_check(args) -> int:
    # float64 throughout; set before the first array is built (importing this module changes nothing).
    jax.config.update("jax_enable_x64", True)
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]
    worst = 0.0
    failures = []
    print(f"manual BPTT vs jax.grad, float64, tol (relative) = {args.tol:g}")
    print(f"{'cell':5} {'shape':16} {'loss':4} {'parameter':38} {'max abs err':>12} {'rel err':>10}")
    for cell in args.cells:
        for shape in shapes:
            problem = make_problem(cell, shape)
            params, xs, carry, targets, lengths, readout, target = problem
            for loss in ("ce", "mse"):
                auto = _autodiff_grads(cell, loss, params, xs, carry, readout, targets, lengths, target)
                dp, dx, dc, dr = _manual_grads(cell, loss, params, xs, carry, readout, targets, lengths, target)
                rows = compare(dp, auto[0], "params") + compare(dx, auto[1], "xs") + compare(dc, auto[2], "carry0")
                if loss == "ce":
                    rows += compare(dr, auto[3], "readout")
                case_worst = max(rows, key=lambda r: r[2])
                worst = max(worst, case_worst[2])
                bad = [r for r in rows if not r[2] <= args.tol]
                failures += [(cell, shape[0], loss) + r for r in bad]
                shown = [case_worst] if args.summary else rows
                for r in shown:
                    label = f"worst of {len(rows)}: {r[0]}" if args.summary else r[0]
                    flag = "  FAIL" if not r[2] <= args.tol else ""
                    print(f"{cell:5} {shape[0]:16} {loss:4} {label[:38]:38} {r[1]:12.3e} {r[2]:10.3e}{flag}")
    print(f"\nworst relative error over all cases and parameters: {worst:.3e} (tol {args.tol:g})")
    if failures:
        print(f"{len(failures)} gradient(s) above tolerance:")
        for f in failures:
            print("  ", f)
        return 1
    print("OK")
    return 0


def main(argv=None) -> int:
    return cli.run(build_parser(), grad_check, argv)


if __name__ == "__main__":
    sys.exit(main())
