"""The cells under the scan layer agree with torch.nn.RNN / LSTM / GRU given the same weights.

PyTorch stores weights as (gates*H, in) and keeps two biases; our layout is
(in, gates*H). RNN and LSTM only ever use b_ih + b_hh, so those are summed;
the GRU keeps both because its reset gate multiplies b_hn.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lstm_jax.cells import LSTMCarry  # noqa: E402
from lstm_jax.layers import apply_stack  # noqa: E402

TORCH_MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def to_jax(t):
    return jnp.asarray(t.detach().numpy())


def params_from_torch(name, module, num_layers, bidirectional):
    layers = []
    for k in range(num_layers):
        directions = {}
        for direction, suffix in (("forward", ""), ("backward", "_reverse")):
            if direction == "backward" and not bidirectional:
                continue
            get = lambda w: getattr(module, f"{w}_l{k}{suffix}")
            p = {"w_x": to_jax(get("weight_ih")).T, "w_h": to_jax(get("weight_hh")).T}
            if name == "gru":
                p["b_x"], p["b_h"] = to_jax(get("bias_ih")), to_jax(get("bias_hh"))
            else:
                p["b"] = to_jax(get("bias_ih")) + to_jax(get("bias_hh"))
            directions[direction] = p
        layers.append(directions if bidirectional else directions["forward"])
    return layers


def carry_from_torch(name, h0, c0, num_layers, bidirectional):
    """torch's (layers*directions, B, H) state -> our per-layer list."""
    dirs = ("forward", "backward") if bidirectional else ("forward",)
    carry = []
    for k in range(num_layers):
        per_dir = {}
        for j, d in enumerate(dirs):
            idx = k * len(dirs) + j
            h = to_jax(h0[idx])
            per_dir[d] = LSTMCarry(hidden=h, cell=to_jax(c0[idx])) if name == "lstm" else h
        carry.append(per_dir if bidirectional else per_dir["forward"])
    return carry


def final_to_torch_layout(name, finals, bidirectional):
    dirs = ("forward", "backward") if bidirectional else ("forward",)
    hs, cs = [], []
    for layer in finals:
        for d in dirs:
            state = layer[d] if bidirectional else layer
            hs.append(state.hidden if name == "lstm" else state)
            if name == "lstm":
                cs.append(state.cell)
    return np.stack(hs), (np.stack(cs) if cs else None)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch(name, bidirectional):
    torch.manual_seed(0)
    B, T, I, H, L = 3, 7, 5, 6, 2
    D = 2 if bidirectional else 1
    module = TORCH_MODULES[name](I, H, num_layers=L, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(B, T, I)
    h0 = torch.randn(L * D, B, H)
    c0 = torch.randn(L * D, B, H)
    with torch.no_grad():
        if name == "lstm":
            out, (h_n, c_n) = module(x, (h0, c0))
        else:
            out, h_n = module(x, h0)

    params = params_from_torch(name, module, L, bidirectional)
    carry = carry_from_torch(name, h0, c0, L, bidirectional)
    ys, finals = jax.jit(lambda p, x, c: apply_stack(name, p, x, c))(params, to_jax(x), carry)
    np.testing.assert_allclose(ys, out.numpy(), atol=1e-5, rtol=1e-5)
    h_ours, c_ours = final_to_torch_layout(name, finals, bidirectional)
    np.testing.assert_allclose(h_ours, h_n.numpy(), atol=1e-5, rtol=1e-5)
    if name == "lstm":
        np.testing.assert_allclose(c_ours, c_n.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_padded_bidirectional_matches_torch_packed_sequence(name):
    """`lengths` means what torch's packed sequences mean, in both directions."""
    torch.manual_seed(1)
    B, T, I, H, L = 4, 6, 3, 5, 2
    module = TORCH_MODULES[name](I, H, num_layers=L, batch_first=True, bidirectional=True)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([6, 2, 4, 1])
    h0, c0 = torch.randn(2 * L, B, H), torch.randn(2 * L, B, H)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        if name == "lstm":
            out, (h_n, c_n) = module(packed, (h0, c0))
        else:
            out, h_n = module(packed, h0)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)

    params = params_from_torch(name, module, L, True)
    carry = carry_from_torch(name, h0, c0, L, True)
    ys, finals = apply_stack(name, params, to_jax(x), carry, lengths=jnp.asarray(lengths.numpy()))
    np.testing.assert_allclose(ys, out.numpy(), atol=1e-5, rtol=1e-5)
    h_ours, c_ours = final_to_torch_layout(name, finals, True)
    np.testing.assert_allclose(h_ours, h_n.numpy(), atol=1e-5, rtol=1e-5)
    if name == "lstm":
        np.testing.assert_allclose(c_ours, c_n.numpy(), atol=1e-5, rtol=1e-5)


def grads_from_torch(name, module, bidirectional):
    """torch's parameter gradients in our layout (one layer); b = b_ih + b_hh gets b_ih's gradient."""
    grads = {}
    for direction, suffix in (("forward", ""), ("backward", "_reverse")):
        if direction == "backward" and not bidirectional:
            continue
        get = lambda w: getattr(module, f"{w}_l0{suffix}").grad.numpy()
        g = {"w_x": get("weight_ih").T, "w_h": get("weight_hh").T}
        if name == "gru":
            g["b_x"], g["b_h"] = get("bias_ih"), get("bias_hh")
        else:
            g["b"] = get("bias_ih")
        grads[direction] = g
    return grads


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("impl", ["scan", "hoisted", "manual", "remat"])
def test_nan_padding_gradients_match_torch_packed_sequence(name, impl):
    """NaN and inf past each length: torch's packed sequence never reads them, and neither do we.

    Outputs, final state and every parameter gradient agree with torch's (and are finite).
    """
    torch.manual_seed(2)
    B, T, I, H = 3, 5, 3, 4
    module = TORCH_MODULES[name](I, H, num_layers=1, batch_first=True, bidirectional=True)
    lengths = torch.tensor([5, 2, 1])
    x = torch.randn(B, T, I)
    pad = torch.arange(T)[None, :, None] >= lengths[:, None, None]
    x = torch.where(pad, torch.tensor(float("nan")), x)
    x[1, 3] = float("inf")
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = module(packed)
    h_n = state[0] if name == "lstm" else state
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    loss_t = (out**2).sum() + h_n.sum()
    loss_t.backward()

    params = params_from_torch(name, module, 1, True)

    def loss(params):
        ys, finals = apply_stack(name, params, to_jax(x), lengths=jnp.asarray(lengths.numpy()), impl=impl)
        h_ours = [f.hidden if name == "lstm" else f for f in (finals[0]["forward"], finals[0]["backward"])]
        return jnp.sum(ys**2) + sum(jnp.sum(h) for h in h_ours)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(value, loss_t.item(), rtol=1e-5)
    expected = grads_from_torch(name, module, True)
    for direction in ("forward", "backward"):
        for key, g in expected[direction].items():
            got = np.asarray(grads[0][direction][key])
            assert np.isfinite(got).all(), (direction, key)
            np.testing.assert_allclose(got, g, atol=1e-5, rtol=1e-4, err_msg=f"{direction} {key}")
