"""A user's typed file against lstm_jax's public API; tests/test_typing.py runs mypy over it (zero errors).

``assert_type`` makes each public function's declared return type part of the check: a function that lost its
annotation (returning ``Any``) fails it. This file is type-checked, not run.
"""

from __future__ import annotations

from typing import Any, Callable, assert_type

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import (
    LSTMCarry,
    LayerImpl,
    apply_stack,
    default_impl,
    init_stack,
    layer_impl,
    lstm_step,
    lstm_zeros_carry,
    scan_layer,
    zeros_stack_carry,
)
from lstm_jax.data.synthetic import adding_batch_fn
from lstm_jax.data.windows import random_windows
from lstm_jax.models.char_model import char_logits, char_loss, init_char_model
from lstm_jax.models.classifier import ClassifierConfig, classifier_logits, init_classifier
from lstm_jax.models.spec import RecurrentSpec
from lstm_jax.train import TrainConfig, TrainResult, fit

key = jax.random.PRNGKey(0)
params = init_stack(key, "lstm", input_size=8, hidden_size=16, num_layers=2)
xs = jnp.ones((4, 10, 8))

impl_name = assert_type(default_impl("lstm"), str)
impl = assert_type(layer_impl(impl_name, precision="fp32"), LayerImpl)
ys, finals = apply_stack("lstm", params, xs, impl=None)
assert_type(ys, jax.Array)
assert_type(finals, list)
ys, finals = apply_stack("lstm", params, xs, zeros_stack_carry("lstm", params, (4,)), impl=impl)

one = lstm_zeros_carry(16, (4,))
carry, y = lstm_step(params[0], one, xs[:, 0])
assert_type(carry, LSTMCarry)
assert_type(y, jax.Array)
layer_ys, _ = scan_layer(lstm_step, params[0], xs, one)
assert_type(layer_ys, jax.Array)

spec = RecurrentSpec(cell="lstm", hidden=32, layers=2)  # impl left at None: the default rule
char = init_char_model(key, 65, spec)
logits, _ = char_logits(char, jnp.zeros((2, 5), jnp.int32), spec)
assert_type(logits, jax.Array)
loss, _ = char_loss(char, jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 5), jnp.int32), spec)
assert_type(loss, jax.Array)
stack_ys, _ = spec.run(spec.init(key, 8), xs)
assert_type(stack_ys, jax.Array)

config = ClassifierConfig(input_size=8, spec=RecurrentSpec(hidden=16))
assert_type(classifier_logits(init_classifier(key, config), xs, config), jax.Array)

inputs, targets = random_windows(np.arange(100), 4, 10, seed=0, step=0)
assert_type(inputs, np.ndarray)
get_batch = assert_type(adding_batch_fn(key, 4, 20), Callable[[int], tuple[jax.Array, jax.Array]])


def loss_fn(p: Any, batch: Any, key: jax.Array, state: Any) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
    batch_xs, batch_ys = batch
    out, _ = apply_stack("lstm", p, batch_xs)
    return jnp.mean((out[:, -1, :1] - batch_ys) ** 2), (state, {})


result = assert_type(fit(loss_fn, params, get_batch, TrainConfig(steps=2)), TrainResult)
