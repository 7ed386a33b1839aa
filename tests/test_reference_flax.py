"""The cells agree with Flax's LSTMCell, OptimizedLSTMCell and GRUCell under nn.RNN.

Flax keeps one Dense per gate: input kernels ``i?`` (no bias, except the GRU's)
and hidden kernels ``h?``. Its LSTM carry is ordered (c, h); ours is named.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.cells import LSTMCarry, gru_step, init_gru, init_lstm, lstm_step
from lstm_jax.layers import scan_layer

B, T, I, H = 3, 6, 4, 5


def perturbed(params, key):
    """Non-zero biases everywhere, so a mis-mapped bias cannot hide."""
    flat, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(flat))
    return jax.tree_util.tree_unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(flat, keys)]
    )


def lstm_to_flax(p):
    w_x, w_h, b = (np.split(np.asarray(p[k]), 4, axis=-1) for k in ("w_x", "w_h", "b"))
    out = {}
    for j, g in enumerate("ifgo"):
        out[f"i{g}"] = {"kernel": w_x[j]}
        out[f"h{g}"] = {"kernel": w_h[j], "bias": b[j]}
    return {"params": {"cell": out}}


def gru_to_flax(p):
    w_x, w_h, b_x, b_h = (np.split(np.asarray(p[k]), 3, axis=-1) for k in ("w_x", "w_h", "b_x", "b_h"))
    out = {f"i{g}": {"kernel": w_x[j], "bias": b_x[j]} for j, g in enumerate("rzn")}
    out["hr"] = {"kernel": w_h[0]}
    out["hz"] = {"kernel": w_h[1]}
    out["hn"] = {"kernel": w_h[2], "bias": b_h[2]}
    return {"params": {"cell": out}}


def inputs():
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    h0 = jax.random.normal(jax.random.PRNGKey(2), (B, H))
    c0 = jax.random.normal(jax.random.PRNGKey(3), (B, H))
    return xs, h0, c0


@pytest.mark.parametrize("flax_cell", [nn.LSTMCell, nn.OptimizedLSTMCell])
def test_lstm_matches_flax(flax_cell):
    params = perturbed(init_lstm(jax.random.PRNGKey(0), I, H), jax.random.PRNGKey(9))
    xs, h0, c0 = inputs()
    rnn = nn.RNN(flax_cell(features=H), return_carry=True)
    (c_f, h_f), ys_f = rnn.apply(lstm_to_flax(params), xs, initial_carry=(c0, h0))
    ys, final = scan_layer(lstm_step, params, xs, LSTMCarry(hidden=h0, cell=c0))
    np.testing.assert_allclose(ys, ys_f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final.hidden, h_f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final.cell, c_f, atol=1e-5, rtol=1e-5)


def test_gru_matches_flax():
    params = perturbed(init_gru(jax.random.PRNGKey(0), I, H), jax.random.PRNGKey(9))
    # Flax's GRU has no bias on the r and z hidden projections: fold ours into b_x.
    b_h = np.asarray(params["b_h"])
    params["b_x"] = params["b_x"].at[: 2 * H].add(b_h[: 2 * H])
    params["b_h"] = params["b_h"].at[: 2 * H].set(0.0)
    xs, h0, _ = inputs()
    rnn = nn.RNN(nn.GRUCell(features=H), return_carry=True)
    h_f, ys_f = rnn.apply(gru_to_flax(params), xs, initial_carry=h0)
    ys, final = scan_layer(gru_step, params, xs, h0)
    np.testing.assert_allclose(ys, ys_f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final, h_f, atol=1e-5, rtol=1e-5)


def test_padded_lstm_final_carry_matches_flax_seq_lengths():
    params = perturbed(init_lstm(jax.random.PRNGKey(0), I, H), jax.random.PRNGKey(9))
    xs, h0, c0 = inputs()
    lengths = jnp.array([6, 2, 4])
    rnn = nn.RNN(nn.LSTMCell(features=H), return_carry=True)
    (c_f, h_f), ys_f = rnn.apply(lstm_to_flax(params), xs, initial_carry=(c0, h0), seq_lengths=lengths)
    ys, final = scan_layer(lstm_step, params, xs, LSTMCarry(hidden=h0, cell=c0), lengths=lengths)
    np.testing.assert_allclose(final.hidden, h_f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final.cell, c_f, atol=1e-5, rtol=1e-5)
    # Flax leaves whatever the cell produced in the padding; we zero it. Real steps agree.
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(ys)[valid], np.asarray(ys_f)[valid], atol=1e-5, rtol=1e-5)
