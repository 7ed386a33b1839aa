"""The cell protocol: one :class:`Cell` object holds everything the library knows about a cell type.

A cell is defined by its *recurrence*: given the input projection
``xw_t = x_t @ w_x + b`` (which does not depend on the state, so fast layers
compute it for all steps at once), it maps the previous carry to the next one::

    recurrence(params, carry_{t-1}, xw_t, compute_dtype) -> (carry_t, y_t, residuals_t)

``residuals_t`` is a dict of arrays the hand-derived backward needs (it must
contain ``"h_prev"``, the operand of ``w_h``); the reference step simply drops
it (and XLA removes the dead code). The readable per-step function is then
:meth:`Cell.step`, ``(params, carry, x_t) -> (carry, y_t)``: the projection
and the recurrence, one definition of the equations for every layer
implementation.

For the hand-derived BPTT (:mod:`lstm_jax.bptt`, layer impl ``"manual"``) a
cell also gives its backward step::

    backward_step(params, residuals_t, dcarry_t, dy_t, compute_dtype)
        -> (dz_in_t, dz_rec_t or None, dcarry_{t-1})

with ``dcarry_t = dL/dcarry_t`` from the later steps and ``dy_t = dL/dy_t``;
``dz_in_t`` is ``dL/dxw_t`` (gives ``dW_x``, ``dx_t`` and the input bias) and
``dz_rec_t`` is ``dL/d(h_{t-1} @ w_h [+ recurrent bias])`` (``None`` when it is
the same array as ``dz_in_t``, which saves storing it twice).

Shapes: ``I`` input size, ``H`` hidden size, ``G`` = :attr:`Cell.num_gates`;
``w_x (I, G*H)``, ``w_h (H, G*H)``, biases ``(G*H,)``; every carry leaf
``(..., H)``; ``x_t (..., I)`` with ``...`` empty or one batch axis. A cell
without recurrent weights (``recurrent_weight=None``: minGRU, minLSTM) has no
``w_h``; its ``H`` is ``w_x.shape[1] // G``.

A cell whose recurrence is *linear in the state* (elementwise
``h_t = a_t ⊙ h_{t-1} + b_t`` with ``a_t``, ``b_t`` functions of ``xw_t``
only) can also give it in log space::

    linear_recurrence(params, xw, compute_dtype) -> (log_a, log_b)     # (..., G*H) -> 2 x (..., H)

which lets the layer impl ``"parallel"`` (:mod:`lstm_jax.impls.parallel_scan`)
evaluate all steps at once with an associative scan. It must describe the same
function as ``recurrence`` (``tests/test_min_cells.py`` checks it).

For quasi-DEER (layer impl ``"deer"``, ``method="diagonal"``) a cell can give
the diagonal of its step's Jacobian at about the cost of one step::

    jacobian_diagonal(params, carry_{t-1}, xw_t, compute_dtype) -> diag    # carry-shaped, leaves (..., H)

``diag`` has the carry's pytree structure and shapes; each leaf holds, per
unit ``j``, ``∂ leaf_t[j] / ∂ leaf_{t-1}[j]`` of the same leaf (LSTM:
``(∂h_t[j]/∂h_{t-1}[j], ∂c_t[j]/∂c_{t-1}[j])``), i.e. the diagonal of the
``D x D`` Jacobian of the flattened carry. The pre-activation of unit ``j`` of
gate block ``k`` depends on ``h_{t-1}[j]`` through ``w_h[j, k H + j]``
(:func:`recurrent_diagonal`). Without it ``"deer"`` takes the same diagonal by
``D`` JVPs (``D`` steps of work); ``tests/test_jacobian_diagonal.py`` checks
each cell's against ``jax.jacfwd``.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = dict


def matmul(x: Array, w: Array, compute_dtype: Any, out_dtype: Any, *, transpose_w: bool = False) -> Array:
    """``x @ w`` (or ``x @ wᵀ`` with ``transpose_w``) in ``compute_dtype`` (if given), accumulated in ``out_dtype``.

    ``x (..., K)``; ``w (K, N)``, or ``(N, K)`` with ``transpose_w``. Written as
    one ``dot_general`` contracting the last axis of ``x`` with an axis of
    ``w``, never ``x @ w.T``: for bf16 operands XLA:CPU turns ``jnp.matmul(x,
    w.T)`` into a float32 product (it converts both operands back to f32,
    seen in the optimized HLO), losing the AMX bf16 rate, while the
    ``dot_general`` form stays a bf16 product with f32 accumulation.
    """
    return contract(x, w, ((x.ndim - 1,), (1 if transpose_w else 0,)), compute_dtype, out_dtype)


def contract(a: Array, b: Array, axes: tuple, compute_dtype: Any, out_dtype: Any) -> Array:
    """``dot_general`` of ``a`` and ``b`` over ``axes = (a_axes, b_axes)``, operands in ``compute_dtype``
    (if given), accumulated in ``out_dtype``: the one place the library casts matmul operands."""
    if compute_dtype is not None:
        a, b = a.astype(compute_dtype), b.astype(compute_dtype)
    return jax.lax.dot_general(a, b, (axes, ((), ())), preferred_element_type=out_dtype).astype(out_dtype)


def recurrent_diagonal(w_h: Array, compute_dtype: Any, dtype: Any) -> Array:
    """``w_h[j, k H + j]`` for every gate block ``k`` and unit ``j``: ``(H, G*H) -> (G*H,)`` in ``dtype``.

    ``∂ z[k H + j] / ∂ h_{t-1}[j]`` of ``z = h_{t-1} @ w_h``. Rounded through
    ``compute_dtype`` (if given) as :func:`matmul` rounds ``w_h``, so it is the
    derivative of the product as computed, not of the float32 weights.
    """
    hidden = w_h.shape[0]
    diag = jnp.diagonal(w_h.reshape(hidden, -1, hidden), axis1=0, axis2=2).reshape(-1)  # [k, j] -> k H + j
    return (diag if compute_dtype is None else diag.astype(compute_dtype)).astype(dtype)


def check_max_timescale(max_timescale) -> float:
    """``max_timescale`` as a float when it is a number of time steps >= 3, the least for which
    :func:`chrono_timescales`' range ``U(1, max_timescale - 1)`` is not empty; else a one-line ``ValueError``."""
    try:  # a string or a bool is not a number of steps, though float() reads both
        value = float("nan") if isinstance(max_timescale, (str, bytes, bool)) else float(max_timescale)
    except (TypeError, ValueError):
        value = float("nan")
    if not value >= 3:
        raise ValueError(f"chrono init: max_timescale must be >= 3 (a number of time steps), got {max_timescale!r}")
    return value


def chrono_timescales(key: Array, hidden_size: int, max_timescale: float, dtype=jnp.float32) -> Array:
    """``log u`` with ``u ~ U(1, max_timescale - 1)`` per unit, shape ``(H,)``: chrono gate biases.

    Tallec & Ollivier (2018, "Can recurrent neural networks warp time?"): a keep
    gate ``σ(b)`` with ``b = log u`` holds a unit's state for about
    ``1 / (1 - σ(b)) = 1 + u`` steps when the input is quiet, so drawing ``u``
    uniformly spreads the units' memory ranges over ``[2, max_timescale]``
    instead of starting every unit at the ``1 + e ≈ 3.7`` steps of ``σ(1)``. Set
    ``max_timescale`` to the longest dependency the data is expected to have
    (e.g. the sequence length).
    """
    u = jax.random.uniform(key, (hidden_size,), jnp.float32, 1.0, check_max_timescale(max_timescale) - 1.0)
    return jnp.log(u).astype(dtype)


def _identity(carry: Any) -> Any:
    return carry


def _leaf_name(path) -> str:
    """``"h"`` for a bare-array carry, else the field name (``"hidden"``, ``"cell"``)."""
    if not path:
        return "h"
    key = path[-1]
    return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))


def describe_carry(carry) -> str:
    """How a carry is structured, for error messages: ``LSTMCarry(hidden, cell)`` or ``array``."""
    fields = getattr(type(carry), "_fields", None)
    if fields is not None:
        return f"{type(carry).__name__}({', '.join(fields)})"
    return "array" if hasattr(carry, "shape") else type(carry).__name__


@dataclasses.dataclass(frozen=True)
class Cell:
    """Everything a layer needs to know about one cell type.

    name:           registry name (``"lstm"``); also the prefix of error messages.
    init:           ``(key, input_size, hidden_size, dtype) -> params``.
    zeros_carry:    ``(hidden_size, batch_shape, dtype) -> carry`` (leaves ``(*batch_shape, H)``).
    recurrence:     ``(params, carry, xw_t, compute_dtype) -> (carry, y_t, residuals)``; see the module docstring.
    num_gates:      ``G``, the number of ``H``-wide blocks of ``w_x``, ``w_h`` and the biases.
    param_keys:     the keys of the params dict.
    input_bias:     key of the bias added to ``x_t @ w_x`` (``None``: no bias).
    recurrent_bias: key of a bias added to ``h_{t-1} @ w_h`` inside the recurrence (GRU), else ``None``.
    backward_step:  the hand-derived backward of one step (``None``: autodiff-only cell).
    hidden:         ``carry -> h_t``, the output ``y_t`` and the operand of ``w_h``.
    recurrent_weight: key of the ``(H, G*H)`` recurrent weights, or ``None`` for a cell
                    whose state enters only elementwise (then ``H = w_x.shape[1] // G``).
    linear_recurrence: ``(params, xw, compute_dtype) -> (log_a, log_b)`` for a cell with
                    ``h_t = a_t ⊙ h_{t-1} + b_t`` (see the module docstring), else ``None``.
    jacobian_diagonal: ``(params, carry_{t-1}, xw_t, compute_dtype) -> diag``, carry-shaped
                    ``∂carry_t[k] / ∂carry_{t-1}[k]`` for quasi-DEER (module docstring), else ``None``.
    chrono_init:    ``(key, params, max_timescale) -> params`` with the gate biases of the
                    chrono initialisation (Tallec & Ollivier 2018; see :func:`chrono_timescales`),
                    else ``None`` (a cell without a keep gate to set).
    """

    name: str
    init: Callable
    zeros_carry: Callable
    recurrence: Callable
    num_gates: int
    param_keys: tuple = ("w_x", "w_h", "b")
    input_bias: str | None = "b"
    recurrent_bias: str | None = None
    backward_step: Callable | None = None
    hidden: Callable = _identity
    recurrent_weight: str | None = "w_h"
    linear_recurrence: Callable | None = None
    jacobian_diagonal: Callable | None = None
    chrono_init: Callable | None = None

    # -- shapes ---------------------------------------------------------------

    def hidden_size(self, params: Params) -> int:
        if self.recurrent_weight is None:
            return params["w_x"].shape[-1] // self.num_gates
        return params[self.recurrent_weight].shape[0]

    def carry_like(self, hidden_size: int, batch_shape: tuple, dtype) -> Any:
        """Shapes and dtypes of a carry (``jax.ShapeDtypeStruct`` leaves), without allocating one."""
        return jax.eval_shape(lambda: self.zeros_carry(hidden_size, tuple(batch_shape), dtype))

    def input_projection(self, params: Params, x: Array, compute_dtype, dtype) -> Array:
        """``x @ w_x + b``: ``(..., I) -> (..., G*H)`` in ``dtype`` (the carry dtype)."""
        xw = matmul(x, params["w_x"], compute_dtype, dtype)
        return xw if self.input_bias is None else xw + params[self.input_bias]

    # -- validation (shapes are static under jit: raised at trace time) ---------

    def check_params(self, params: Params) -> int:
        """Keys and shapes of one layer's params against this cell. Returns ``H``."""
        if not isinstance(params, dict):
            raise TypeError(f"{self.name}: params must be a dict, got {type(params).__name__}")
        missing = [k for k in self.param_keys if k not in params]
        if missing:
            raise ValueError(
                f"{self.name}: params missing {missing}; expected keys {self.param_keys} "
                f"(got {sorted(params)}): are these params for another cell?"
            )
        extra = sorted(set(params) - set(self.param_keys))
        if extra:  # e.g. an lstm's w_h given to min_gru, whose w_x and b would otherwise fit (with 2H)
            raise ValueError(
                f"{self.name}: params have unexpected keys {extra}; expected keys {self.param_keys}: "
                "are these params for another cell?"
            )
        for key, rank in self._param_ranks().items():  # a 1-D w_x of a matching length once reached a kernel
            shape = getattr(params[key], "shape", None)
            if shape is None or len(shape) != rank:
                raise ValueError(
                    f"{self.name}: params[{key!r}] must be {rank}-D, {self._expected_shape(key)}; got shape {shape}"
                )
        hidden = self.hidden_size(params)
        width = self.num_gates * hidden
        bias_ok = all(
            params[k].shape == (width,) for k in (self.input_bias, self.recurrent_bias) if k is not None
        )
        w_x = params["w_x"]
        w_h = None if self.recurrent_weight is None else params[self.recurrent_weight]
        if w_h is None:  # no recurrent weights: w_x alone fixes H, and must split into G blocks
            if w_x.ndim != 2 or hidden < 1 or w_x.shape[-1] != width or not bias_ok:
                raise ValueError(
                    f"{self.name}: w_x {w_x.shape} / biases do not split into {self.num_gates} gate "
                    f"block(s) of one hidden size (w_x must be (input_size, {self.num_gates} * hidden))"
                )
        elif w_h.shape != (hidden, width) or w_x.shape[-1] != width or not bias_ok:
            raise ValueError(
                f"{self.name}: w_h {w_h.shape} / w_x {w_x.shape} do not match "
                f"{self.num_gates} gate block(s) of hidden size {hidden}"
            )
        return hidden

    def _param_ranks(self) -> dict:
        """The rank each param must have: weights 2-D, biases 1-D (other keys a cell adds: unchecked here)."""
        ranks = {"w_x": 2}
        if self.recurrent_weight is not None:
            ranks[self.recurrent_weight] = 2
        for key in (self.input_bias, self.recurrent_bias):
            if key is not None:
                ranks[key] = 1
        return ranks

    def _expected_shape(self, key: str) -> str:
        gates = f"{self.num_gates} * hidden" if self.num_gates > 1 else "hidden"
        if key == "w_x":
            return f"(input_size, {gates})"
        if key == self.recurrent_weight:
            return f"(hidden, {gates})"
        return f"({gates},)"

    def check_carry(self, carry, hidden_size: int, batch_shape: tuple, dtype, context: str, what: str = "carry") -> None:
        """``carry`` must be structured like :attr:`zeros_carry`'s result, leaves ``(*batch_shape, H)``.

        ``context`` ends the shape message (what the expected shape follows from).
        A leaf dtype that the step would promote (a float16 carry with float32
        params) is refused here instead of deep inside ``lax.scan``.
        """
        expected = self.carry_like(hidden_size, batch_shape, dtype)
        if jax.tree_util.tree_structure(carry) != jax.tree_util.tree_structure(expected):
            raise TypeError(
                f"{self.name}: {what} must be {describe_carry(expected)} like zeros_carry's, "
                f"got {describe_carry(carry)}"
            )
        for path, leaf in jax.tree_util.tree_flatten_with_path(carry)[0]:
            shape = getattr(leaf, "shape", None)
            want = tuple(batch_shape) + (hidden_size,)
            if shape != want:
                raise ValueError(
                    f"{self.name}: {what} {_leaf_name(path)} has shape {shape}, expected {want} {context}"
                )
            if jnp.result_type(leaf.dtype, dtype) != leaf.dtype:
                raise TypeError(
                    f"{self.name}: {what} {_leaf_name(path)} has dtype {leaf.dtype} but the params are "
                    f"{jnp.dtype(dtype)}; the step would compute in {jnp.result_type(leaf.dtype, dtype)}: "
                    f"cast the {what} to {jnp.dtype(dtype)}"
                )

    def check_input(self, params: Params, x: Array) -> None:
        w_x = params["w_x"]
        where = f"{self.name}_step"
        if x.ndim not in (1, 2):
            raise ValueError(
                f"{where}: x_t must have shape (input_size,) or (batch, input_size); "
                f"got rank {x.ndim} with shape {x.shape}"
            )
        if x.shape[-1] != w_x.shape[0]:
            raise ValueError(
                f"{where}: x_t has {x.shape[-1]} features (shape {x.shape}) but w_x "
                f"expects input_size={w_x.shape[0]} (w_x shape {w_x.shape})"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{where}: x_t must be a floating dtype, got {x.dtype}")

    # -- the reference step ---------------------------------------------------

    def step(self, params: Params, carry, x_t: Array, *, compute_dtype=None) -> tuple[Any, Array]:
        """One step ``(params, carry, x_t) -> (carry, y_t)``: ``recurrence(carry, x_t @ w_x + b)``.

        ``x_t``: ``(I,)`` or ``(batch, I)``; carry leaves ``(H,)`` or ``(batch, H)``.
        The matmuls run in ``compute_dtype`` (if given) and accumulate into
        the carry's dtype; the non-linearities stay in that dtype.
        """
        self.check_input(params, x_t)
        hidden_size = self.hidden_size(params)
        self.check_carry(
            carry, hidden_size, x_t.shape[:-1], params["w_x"].dtype,
            f"for x_t of shape {x_t.shape} and hidden_size={hidden_size}",
        )
        dtype = jax.tree_util.tree_leaves(carry)[0].dtype
        xw_t = self.input_projection(params, x_t, compute_dtype, dtype)
        new_carry, y_t, _ = self.recurrence(params, carry, xw_t, compute_dtype)
        return new_carry, y_t


# ---------------------------------------------------------------------------
# Initialisation and zero carries shared by the cells


def glorot_uniform(key: Array, fan_in: int, fan_out: int, dtype=jnp.float32) -> Array:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), shape (fan_in, fan_out)."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, (fan_in, fan_out), dtype, -limit, limit)


def glorot_blocks(key: Array, input_size: int, hidden_size: int, num_blocks: int, dtype=jnp.float32) -> Array:
    """``num_blocks`` Glorot-uniform (I, H) blocks side by side: (I, num_blocks*H), fan_out = H per gate."""
    keys = jax.random.split(key, num_blocks)
    return jnp.concatenate([glorot_uniform(k, input_size, hidden_size, dtype) for k in keys], axis=1)


def orthogonal_blocks(key: Array, hidden_size: int, num_blocks: int, dtype=jnp.float32) -> Array:
    """``num_blocks`` independent orthogonal (H, H) matrices side by side: (H, num_blocks*H).

    Each gate's recurrent block is orthogonal on its own; a single orthogonal
    (H, k*H) matrix would only have orthonormal rows, not orthogonal blocks.
    """
    keys = jax.random.split(key, num_blocks)
    init = jax.nn.initializers.orthogonal()
    return jnp.concatenate([init(k, (hidden_size, hidden_size), dtype) for k in keys], axis=1)


def positive_size(name: str, label: str, value) -> int:
    """``value`` as a Python int if it is a positive integer of any integral type (``operator.index``:
    int, ``np.int64``, a 0-d integer array), else one ``ValueError`` line; bools and floats are refused."""
    try:
        size = None if isinstance(value, (bool, np.bool_)) else operator.index(value)
    except TypeError:
        size = None
    if size is None or size < 1:
        raise ValueError(f"{name}: {label} must be a positive integer, got {value!r}")
    return size


def check_sizes(name: str, input_size, hidden_size) -> tuple[int, int]:
    """``(input_size, hidden_size)`` as Python ints (:func:`positive_size`); every ``init_*`` calls it first."""
    return positive_size(name, "input_size", input_size), positive_size(name, "hidden_size", hidden_size)


def zeros_carry(hidden_size: int, batch_shape: tuple = (), dtype=jnp.float32) -> Array:
    """Zero state for single-array carries (rnn, gru): (*batch_shape, H)."""
    return jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype)
