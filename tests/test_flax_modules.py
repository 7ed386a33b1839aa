"""The Flax NNX modules of ``lstm_jax.flax``: Flax's own cells agree with them, and they behave as NNX modules.

* weights converted from Linen's ``nn.OptimizedLSTMCell`` / ``nn.GRUCell`` run by ``nn.RNN`` (stacked,
  bidirectional, padded) give the same outputs, final carry and gradients;
* an NNX model built on them trains with ``nnx.Optimizer`` + optax (docs/flax.md's, run as written);
* ``nnx.jit``, ``nnx.split`` / ``merge`` and an Orbax round trip of the state keep the outputs;
* a user's file outside the repository trains one with the default impl, in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from lstm_jax import IMPLS, apply_stack
from lstm_jax.cells import LSTMCarry
from lstm_jax.flax import GRU, LSTM, RNN, MinGRU, MinLSTM

ROOT = Path(__file__).resolve().parents[1]
B, T, I, H = 3, 6, 4, 5
TOL = dict(atol=2e-5, rtol=2e-5)


def runs_here(impl: str) -> bool:
    return IMPLS[impl].unavailable() is None


# -- Flax Linen <-> the library's layout (one Dense per gate in Flax; fused [gates] columns here)


def lstm_from_flax(cell):
    cat = lambda prefix, leaf: jnp.concatenate([cell[f"{prefix}{g}"][leaf] for g in "ifgo"], axis=-1)  # noqa: E731
    return {"w_x": cat("i", "kernel"), "w_h": cat("h", "kernel"), "b": cat("h", "bias")}


def gru_from_flax(cell):
    cat = lambda prefix, leaf: jnp.concatenate([cell[f"{prefix}{g}"][leaf] for g in "rzn"], axis=-1)  # noqa: E731
    # Flax has no bias on the r and z hidden projections: ours are zero there.
    b_h = jnp.concatenate([jnp.zeros(2 * cell["hn"]["bias"].shape[0]), cell["hn"]["bias"]])
    return {"w_x": cat("i", "kernel"), "w_h": cat("h", "kernel"), "b_x": cat("i", "bias"), "b_h": b_h}


def perturbed(variables, key):
    """Non-zero biases everywhere (Flax starts them at 0), so a mis-mapped bias cannot hide."""
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def inputs():
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    weights = jax.random.normal(jax.random.PRNGKey(2), (B, T, 2 * H))  # the loss is sum(ys * weights)
    return xs, weights


@pytest.mark.parametrize("impl", ["manual", "onednn"])
def test_two_layer_lstm_matches_linen_optimized_lstm(impl):
    if not runs_here(impl):
        pytest.skip(IMPLS[impl].unavailable())
    xs, weights = inputs()
    rnns = [nn.RNN(nn.OptimizedLSTMCell(features=H)) for _ in range(2)]
    flax_vars = [perturbed(rnns[0].init(jax.random.PRNGKey(3), xs), jax.random.PRNGKey(5)),
                 perturbed(rnns[1].init(jax.random.PRNGKey(4), jnp.zeros((B, T, H))), jax.random.PRNGKey(6))]

    def flax_loss(variables, xs):
        ys = rnns[1].apply(variables[1], rnns[0].apply(variables[0], xs))
        return jnp.sum(ys * weights[..., :H]), ys

    (_, ys_f), (g_f, g_xs_f) = jax.jit(jax.value_and_grad(flax_loss, argnums=(0, 1), has_aux=True))(flax_vars, xs)
    model = LSTM(I, H, num_layers=2, impl=impl, rngs=nnx.Rngs(0))
    model.set_params([lstm_from_flax(v["params"]["cell"]) for v in flax_vars])

    def loss(model, xs):
        ys = model(xs)
        return jnp.sum(ys * weights[..., :H]), ys

    (g_model, g_xs), ys = nnx.jit(nnx.grad(loss, argnums=(0, 1), has_aux=True))(model, xs)
    np.testing.assert_allclose(ys, ys_f, **TOL)
    np.testing.assert_allclose(g_xs, g_xs_f, **TOL)
    for k in range(2):
        ours = {name: g_model["layers"][k][name][...] for name in ("w_x", "w_h", "b")}
        np.testing.assert_allclose(ours["w_x"], lstm_from_flax(g_f[k]["params"]["cell"])["w_x"], **TOL)
        np.testing.assert_allclose(ours["w_h"], lstm_from_flax(g_f[k]["params"]["cell"])["w_h"], **TOL)
        np.testing.assert_allclose(ours["b"], lstm_from_flax(g_f[k]["params"]["cell"])["b"], **TOL)


def test_padded_bidirectional_gru_matches_linen_gru():
    xs, weights = inputs()
    lengths = jnp.array([6, 2, 4])
    valid = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]  # Flax leaves values in the padding; ours are 0
    birnn = nn.Bidirectional(nn.RNN(nn.GRUCell(features=H)), nn.RNN(nn.GRUCell(features=H)), return_carry=True)
    variables = perturbed(birnn.init(jax.random.PRNGKey(3), xs, seq_lengths=lengths), jax.random.PRNGKey(5))

    def flax_loss(variables, xs):
        (h_fwd, h_bwd), ys = birnn.apply(variables, xs, seq_lengths=lengths)
        return jnp.sum(jnp.where(valid, ys, 0.0) * weights), (ys, h_fwd, h_bwd)

    (_, (ys_f, h_fwd, h_bwd)), (g_f, g_xs_f) = jax.jit(jax.value_and_grad(
        flax_loss, argnums=(0, 1), has_aux=True))(variables, xs)
    model = GRU(I, H, bidirectional=True, impl="manual", rngs=nnx.Rngs(0))
    p = variables["params"]
    model.set_params([{"forward": gru_from_flax(p["forward_rnn"]["cell"]),
                       "backward": gru_from_flax(p["backward_rnn"]["cell"])}])

    def loss(model, xs):
        ys, final = model(xs, lengths=lengths, return_carry=True)
        return jnp.sum(ys * weights), (ys, final)

    (g_model, g_xs), (ys, final) = nnx.jit(nnx.grad(loss, argnums=(0, 1), has_aux=True))(model, xs)
    np.testing.assert_allclose(ys, jnp.where(valid, ys_f, 0.0), **TOL)
    np.testing.assert_allclose(final[0]["forward"], h_fwd, **TOL)
    np.testing.assert_allclose(final[0]["backward"], h_bwd, **TOL)
    np.testing.assert_allclose(g_xs, g_xs_f, **TOL)
    for d, name in (("forward", "forward_rnn"), ("backward", "backward_rnn")):
        ours = {k: v[...] for k, v in g_model["layers"][0][d].items()}
        theirs = gru_from_flax(g_f["params"][name]["cell"])
        for k in ("w_x", "w_h", "b_x"):
            np.testing.assert_allclose(ours[k], theirs[k], **TOL, err_msg=f"{d} {k}")
        np.testing.assert_allclose(ours["b_h"][2 * H:], theirs["b_h"][2 * H:], **TOL)  # the one hidden bias Flax has


def test_initial_carry_is_used_and_final_carry_returned():
    xs, _ = inputs()
    model = LSTM(I, H, impl="scan", rngs=nnx.Rngs(0))
    carry = [LSTMCarry(hidden=jnp.full((B, H), 0.5), cell=jnp.full((B, H), -0.5))]
    ys, final = model(xs, carry, return_carry=True)
    ys_ref, final_ref = apply_stack("lstm", model.params, xs, carry, impl="scan")
    np.testing.assert_array_equal(ys, ys_ref)
    np.testing.assert_array_equal(final[0].cell, final_ref[0].cell)
    assert not np.allclose(ys, model(xs))  # the zero carry gives other outputs
    assert jax.tree_util.tree_structure(model.initial_carry(B)) == jax.tree_util.tree_structure(carry)


@pytest.mark.parametrize("module, impl", [(LSTM, "onednn"), (GRU, "onednn"), (MinGRU, "parallel"),
                                          (MinLSTM, "parallel"), (RNN, "hoisted")])
def test_every_module_runs_other_impls_like_scan(module, impl):
    if not runs_here(impl):
        pytest.skip(IMPLS[impl].unavailable())
    xs, _ = inputs()
    model = module(I, H, num_layers=2, impl=impl, rngs=nnx.Rngs(0))
    assert model.resolved_impl == impl
    ys_ref, _ = apply_stack(model.cell, model.params, xs, impl="scan")
    np.testing.assert_allclose(model(xs), ys_ref, atol=1e-5, rtol=1e-5)


class Tagger(nnx.Module):
    """Per-step regression: an LSTM stack, then a linear read-out."""

    def __init__(self, *, impl=None, dropout=0.0, rngs):
        self.rnn = LSTM(2, 16, num_layers=2, dropout=dropout, impl=impl, rngs=rngs)
        self.head = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x))[..., 0]


def running_sum_batch(step):
    """Targets: the running mean of the first feature (needs memory); the second feature is noise."""
    x = jax.random.normal(jax.random.PRNGKey(step), (16, 12, 2))
    return x, jnp.cumsum(x[..., 0], axis=1) / jnp.arange(1, 13)


def test_dropout_is_random_in_training_and_off_in_eval():
    x, _ = running_sum_batch(0)
    model = LSTM(2, 8, num_layers=2, dropout=0.5, impl="scan", rngs=nnx.Rngs(0))
    run = nnx.jit(lambda model, x: model(x))
    assert not np.allclose(run(model, x), run(model, x))  # two masks: the module's dropout stream advanced
    model.eval()
    np.testing.assert_array_equal(run(model, x), run(model, x))
    np.testing.assert_allclose(run(model, x), apply_stack("lstm", model.params, x, impl="scan")[0], atol=1e-6)


def test_nnx_jit_split_merge_and_orbax_round_trip(tmp_path):
    x, _ = running_sum_batch(0)
    model = Tagger(impl="manual", dropout=0.2, rngs=nnx.Rngs(params=0, dropout=1))
    model.eval()
    eager = model(x)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), eager, atol=1e-6, rtol=1e-6)
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), eager)

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(model))
    checkpointer.wait_until_finished()
    abstract = nnx.eval_shape(lambda: Tagger(impl="manual", dropout=0.2, rngs=nnx.Rngs(params=7, dropout=8)))
    graphdef, abstract_state = nnx.split(abstract)
    restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "state", abstract_state))
    restored.eval()
    np.testing.assert_array_equal(restored(x), eager)
    assert restored.rnn.resolved_impl == "manual"


def test_bad_arguments_are_refused_in_one_line():
    with pytest.raises(ValueError, match="dropout must be a rate in"):
        LSTM(3, 4, dropout=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs rngs with a 'dropout'"):
        LSTM(3, 4, num_layers=2, dropout=0.1, rngs=nnx.Rngs(params=0))
    LSTM(3, 4, dropout=0.1, rngs=nnx.Rngs(params=0))  # one layer: no dropout between layers, no stream needed
    with pytest.raises(ValueError, match="unknown layer impl 'fast'"):
        LSTM(3, 4, impl="fast", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="has no 'bf17' precision|unknown precision 'bf17'"):
        LSTM(3, 4, impl="scan", precision="bf17", rngs=nnx.Rngs(0))
    model = LSTM(3, 4, impl="scan", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="do not match the module's"):
        model.set_params([{"w_x": jnp.zeros((3, 8)), "w_h": jnp.zeros((4, 8)), "b": jnp.zeros(8)}])
    with pytest.raises(ValueError, match="xs must have shape"):
        model(jnp.zeros((2, 3, 4, 3)))


USER_FILE = """
import json, sys
import jax, jax.numpy as jnp, optax
from flax import nnx
from lstm_jax.flax import LSTM

class Model(nnx.Module):
    def __init__(self, rngs):
        self.lstm = LSTM(2, 16, num_layers=2, rngs=rngs)     # impl left at the library's default
        self.out = nnx.Linear(16, 1, rngs=rngs)
    def __call__(self, x):
        return self.out(self.lstm(x))[..., 0]

model = Model(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

@nnx.jit
def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

losses = []
for i in range(20):
    x = jax.random.normal(jax.random.PRNGKey(i), (8, 10, 2))
    losses.append(float(step(model, optimizer, x, jnp.cumsum(x[..., 0], axis=1) / 10)))
json.dump({"impl": model.lstm.resolved_impl, "losses": losses, "module": LSTM.__module__,
           "file": sys.modules["lstm_jax"].__file__}, open("result.json", "w"))
"""


def test_a_user_file_outside_the_repository_trains_on_the_default_impl(tmp_path):
    from lstm_jax.impls import default_impl

    (tmp_path / "train.py").write_text(textwrap.dedent(USER_FILE))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert Path(result["file"]).resolve().parent == ROOT / "lstm_jax"  # this checkout, not an installed copy
    assert result["impl"] == default_impl("lstm", backend="cpu")
    if runs_here("onednn"):
        assert result["impl"] == "onednn"  # the fast path on this CPU
    assert np.mean(result["losses"][-3:]) < np.mean(result["losses"][:3])


def test_flax_bridge_turns_the_module_into_a_linen_module():
    xs, _ = inputs()
    linen = nnx.bridge.to_linen(LSTM, I, H, num_layers=2, impl="manual")
    variables = linen.init(jax.random.PRNGKey(0), xs)
    layers = variables["params"]["layers"]
    params = [{k: v for k, v in layers[k].items()} for k in sorted(layers)]
    np.testing.assert_array_equal(linen.apply(variables, xs), apply_stack("lstm", params, xs, impl="manual")[0])


def test_the_docs_page_runs_and_its_model_learns():
    import re

    page = (ROOT / "docs" / "flax.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"^```python\n(.*?)^```", page, re.S | re.M):
        exec(compile(block, "docs/flax.md", "exec"), namespace)
    assert np.mean(namespace["losses"][-20:]) < 0.5 * namespace["losses"][0]
    assert namespace["accuracy"] > 0.8
