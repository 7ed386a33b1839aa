"""Data parallelism: 4 simulated CPU devices give the single-device loss, gradients and training run.

JAX fixes the device count when it initialises, so the 4-device part runs in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from lstm_jax.distributed import sharding

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    r"""
    import jax, jax.numpy as jnp, numpy as np, optax
    from lstm_jax.distributed import sharding
    from lstm_jax.layers import apply_stack, init_stack

    assert jax.device_count() == 4, jax.devices()
    T, B, I, H, C = 7, 8, 3, 16, 5
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {"rnn": init_stack(k1, "lstm", I, H, num_layers=2),
              "out": 0.1 * jax.random.normal(k2, (H, C))}

    def get_batch(step):
        key = jax.random.fold_in(k3, step)
        xs = np.asarray(jax.random.normal(key, (B, T, I)))
        ys = np.asarray(jax.random.randint(jax.random.fold_in(key, 1), (B,), 0, C))
        lengths = np.asarray(jax.random.randint(jax.random.fold_in(key, 2), (B,), 1, T + 1))
        return {"x": xs, "y": ys, "lengths": lengths}

    def loss_fn(p, batch):
        hs, finals = apply_stack("lstm", p["rnn"], batch["x"], lengths=batch["lengths"], impl="manual")
        logits = finals[-1].hidden @ p["out"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    opt = optax.adam(1e-2)

    @jax.jit
    def train_step(p, s, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))

    # 1 device: everything on device 0, nothing sharded.
    dev0 = jax.devices()[0]
    batch0 = jax.device_put(get_batch(0), dev0)
    loss_1, g_1 = grad_fn(jax.device_put(params, dev0), batch0)

    # 4 devices: batch split, params replicated, the same jitted function.
    mesh = sharding.make_data_mesh()
    assert mesh.devices.size == 4
    sb = sharding.shard_batch(get_batch(0), mesh)
    assert len(sb["x"].addressable_shards) == 4
    assert {s.data.shape for s in sb["x"].addressable_shards} == {(2, T, I)}
    rp = sharding.replicate(params, mesh)
    loss_4, g_4 = grad_fn(rp, sb)
    assert abs(float(loss_4) - float(loss_1)) <= 1e-5, (loss_4, loss_1)
    for a, b in zip(jax.tree_util.tree_leaves(g_4), jax.tree_util.tree_leaves(g_1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert all(len(l.sharding.device_set) == 4 for l in jax.tree_util.tree_leaves(g_4))

    # A few training steps: single device vs parallelize().
    p1, s1 = jax.device_put(params, dev0), jax.device_put(opt.init(params), dev0)
    p4, s4, sharded_get, _, _ = sharding.parallelize(params, opt.init(params), get_batch, mesh=mesh)
    for step in range(4):
        p1, s1, l1 = train_step(p1, s1, jax.device_put(get_batch(step), dev0))
        p4, s4, l4 = train_step(p4, s4, sharded_get(step))
        assert abs(float(l1) - float(l4)) <= 1e-5, (step, l1, l4)
    for a, b in zip(jax.tree_util.tree_leaves(p4), jax.tree_util.tree_leaves(p1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert p4["out"].sharding.is_fully_replicated

    try:
        sharding.shard_batch({"x": np.zeros((6, 2))}, mesh)
    except ValueError as e:
        assert "not divisible" in str(e)
    else:
        raise AssertionError("indivisible batch accepted")
    print("PARALLEL-OK", float(loss_1), float(loss_4))
    """
)


def _on_four_simulated_devices(program: str) -> str:
    """Run ``program`` in a fresh process with 4 simulated CPU devices; its stdout (it must exit 0)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow  # an end-to-end script or process run of 5-20 s; CI's slow tier runs it
def test_four_simulated_devices_match_one_device():
    assert "PARALLEL-OK" in _on_four_simulated_devices(WORKER)


def test_single_device_helpers_in_process():
    mesh = sharding.make_data_mesh()
    n = mesh.devices.size
    batch = {"x": np.ones((2 * n, 3), np.float32), "step": np.int32(3)}
    sb = sharding.shard_batch(batch, mesh)
    np.testing.assert_array_equal(np.asarray(sb["x"]), batch["x"])
    assert sb["step"].sharding.is_fully_replicated
    rep = sharding.replicate({"w": np.arange(4.0)}, mesh)
    assert rep["w"].sharding.is_fully_replicated
    assert sharding.should_parallelize() == (jax.device_count() > 1)
    sharding.initialize_distributed(num_processes=1)  # no-op for one process


def test_make_data_mesh_rejects_empty():
    with pytest.raises(ValueError):
        sharding.make_data_mesh([])


FIT_WORKER = textwrap.dedent(
    r"""
    import jax, jax.numpy as jnp, numpy as np
    from lstm_jax.layers import apply_stack, init_stack
    from lstm_jax.train import TrainConfig, fit

    assert jax.device_count() == 4
    B, T, I, H = 8, 6, 3, 8
    params = {"rnn": init_stack(jax.random.PRNGKey(0), "gru", I, H), "w": jnp.ones((H,)) * 0.1}

    def get_batch(step):
        k = jax.random.fold_in(jax.random.PRNGKey(1), step)
        return {"x": np.asarray(jax.random.normal(k, (B, T, I))), "y": np.asarray(jax.random.normal(k, (B,)))}

    def loss_fn(p, batch, key, model_state):
        ys, _ = apply_stack("gru", p["rnn"], batch["x"], impl="manual")
        loss = jnp.mean((ys[:, -1] @ p["w"] - batch["y"]) ** 2)
        return loss, (model_state, {})

    cfg = TrainConfig(steps=4, warmup_steps=1, log_every=1, eval_every=100, checkpoint_every=100, progress=False)
    sharded = fit(loss_fn, params, get_batch, cfg)                       # default put_batch -> data parallel
    single = fit(loss_fn, params, get_batch, cfg, put_batch=lambda b: jax.device_put(b, jax.devices()[0]))
    assert len(sharded.params["w"].sharding.device_set) == 4
    for a, b in zip(jax.tree_util.tree_leaves(sharded.params), jax.tree_util.tree_leaves(single.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # The explicit switch: False keeps one device although four are there; True == the automatic choice.
    off = fit(loss_fn, params, get_batch, cfg, data_parallel=False)
    assert len(off.params["w"].sharding.device_set) == 1
    on = fit(loss_fn, params, get_batch, cfg, data_parallel=True)
    assert len(on.params["w"].sharding.device_set) == 4
    np.testing.assert_array_equal(np.asarray(on.params["w"]), np.asarray(sharded.params["w"]))
    try:
        fit(loss_fn, params, get_batch, cfg, data_parallel=True, put_batch=jax.device_put)
        raise AssertionError("data_parallel=True with a put_batch of the caller's must be refused")
    except ValueError as e:
        assert "not both" in str(e), e
    print("FIT-OK")
    """
)


@pytest.mark.slow  # in the default run: real processes: tests/test_multiprocess.py
def test_fit_uses_data_parallel_on_four_devices():
    pytest.importorskip("lstm_jax.train")
    assert "FIT-OK" in _on_four_simulated_devices(FIT_WORKER)
