"""``fit`` takes any Optax optimizer: gradient accumulation needs no change to the library."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstm_jax.train import TrainConfig, fit

W_TRUE = jnp.array([[1.0], [-2.0], [0.5]])


def loss_fn(params, batch, key, model_state):
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((pred - batch["y"]) ** 2), (model_state, {})


def big_batch(k):
    x = jax.random.normal(jax.random.PRNGKey(k), (16, 3))
    return {"x": x, "y": x @ W_TRUE + 0.1 * jnp.sin(x[:, :1])}


# SGD too: Adam is almost blind to the scale of the gradient, so a sum in place of a mean would pass with it alone.
@pytest.mark.parametrize("make_opt", [lambda: optax.adam(0.05), lambda: optax.sgd(0.1)], ids=["adam", "sgd"])
def test_multisteps_of_four_equals_four_times_the_batch(make_opt):
    updates, micro = 6, 4
    params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros((1,))}
    quarter = lambda step: jax.tree_util.tree_map(lambda a: a[4 * (step % micro): 4 * (step % micro) + 4],
                                                  big_batch(step // micro))
    config = dict(warmup_steps=0, log_every=1, eval_every=10_000, progress=False, blowup_factor=None)
    accumulated = fit(loss_fn, params, quarter, TrainConfig(steps=updates * micro, **config),
                      optimizer=optax.MultiSteps(make_opt(), micro))
    whole = fit(loss_fn, params, big_batch, TrainConfig(steps=updates, **config), optimizer=make_opt())
    for a, b in zip(jax.tree_util.tree_leaves(accumulated.params), jax.tree_util.tree_leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(whole.params["w"], 0.0)  # it trained
    # a caller's optimizer has its own rate: the records carry none rather than the config's schedule
    assert all("lr" not in r for r in whole.history if r["kind"] == "train")


def test_default_optimizer_is_one_object_per_setting():
    from lstm_jax.train.optim import make_optimizer

    assert make_optimizer(TrainConfig(steps=10)) is make_optimizer(TrainConfig(steps=10))
    assert make_optimizer(TrainConfig(steps=10)) is not make_optimizer(TrainConfig(steps=11))
