"""Sizes of any integral type, and option names an impl does not have (issue 27's smaller items).

``init_*`` of every cell and :func:`lstm_jax.init_stack` take sizes from numpy
sweeps or array shapes (``np.int64``, a 0-d integer array) like Python ints and
refuse bools and floats in one line; a misspelt layer-impl option names the
valid ones.
"""

from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest

from lstm_jax import init_stack
from lstm_jax.cells import CELLS
from lstm_jax.impls import IMPLS, layer_impl

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_init_takes_integral_sizes_and_refuses_the_rest(name):
    init = CELLS[name].init
    ref = init(KEY, 3, 4)
    for size in (np.int64(4), np.int32(4), np.array(4), np.uint8(4)):
        got = init(KEY, np.int16(3), size)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_array_equal(a, b)
    for bad in (True, np.bool_(True), 4.0, np.float32(4), "4", 0, -1, None):
        with pytest.raises(ValueError, match=r"hidden_size must be a positive integer, got ") as err:
            init(KEY, 3, bad)
        assert "\n" not in str(err.value)


def test_init_stack_takes_integral_sizes_and_refuses_the_rest():
    ref = init_stack(KEY, "gru", 3, 4, num_layers=2, bidirectional=True)
    got = init_stack(KEY, "gru", np.int64(3), np.array(4), num_layers=np.int32(2), bidirectional=True)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(a, b)
    for kwargs, message in (({"num_layers": 2.0}, "init_stack: num_layers must be a positive integer, got 2.0"),
                            ({"num_layers": True}, "init_stack: num_layers must be a positive integer, got True"),
                            ({"hidden_size": 4.5}, "init_stack: hidden_size must be a positive integer, got 4.5"),
                            ({"input_size": False}, "init_stack: input_size must be a positive integer, got False")):
        args = {"input_size": 3, "hidden_size": 4, **kwargs}
        with pytest.raises(ValueError, match=f"^{message}$"):
            init_stack(KEY, "lstm", **args)


@pytest.mark.parametrize("name", sorted(IMPLS))
def test_a_misspelt_option_lists_the_valid_ones(name):
    impl = IMPLS[name]
    valid = list(inspect.signature(impl.check_options).parameters)
    with pytest.raises(ValueError) as err:
        layer_impl(name, methd="full")
    listed = ", ".join(valid) if valid else "(none)"
    assert str(err.value) == f"layer impl {name!r} has no option 'methd'; its options are: {listed}"


def test_deer_lists_its_options():
    with pytest.raises(ValueError, match=r"^layer impl 'deer' has no option 'methd'; its options are: method, tol, "
                                         r"max_iters, on_fail, scan$"):
        layer_impl("deer", methd="full")
    assert dict(layer_impl("deer", method="full").options) == {"method": "full"}
