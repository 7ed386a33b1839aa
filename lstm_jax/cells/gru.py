"""The GRU cell in the convention of ``torch.nn.GRU`` and cuDNN.

Equations::

    a   = x_t @ w_x + b_x                       # (..., 3H), blocks [r|z|n]
    u   = h_{t-1} @ w_h + b_h                   # (..., 3H)
    r_t = σ(a_r + u_r)                          reset gate
    z_t = σ(a_z + u_z)                          update gate
    n_t = tanh(a_n + r_t ⊙ u_n)                 new state; r_t multiplies the hidden
                                                projection *including* its bias b_h[n]
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    y_t = h_t

Jacobian diagonal (quasi-DEER), per unit ``j``, with ``w_h``'s diagonal per block::

    ∂r = r(1-r) w_h[j, j],   ∂z = z(1-z) w_h[j, H+j],   ∂u_n = w_h[j, 2H+j]
    ∂n = (1 - n²) ⊙ (∂r ⊙ u_n + r ⊙ ∂u_n)      # u_n includes b_h[n]
    ∂h_t[j]/∂h_{t-1}[j] = z + ∂z ⊙ (h_{t-1} - n) + (1 - z) ⊙ ∂n

Because of the reset gate's position the two biases are not interchangeable,
so both are kept. Params: ``w_x (I, 3H)``, ``w_h (H, 3H)``, ``b_x (3H,)``,
``b_h (3H,)``, gate order :data:`GRU_GATES`. Carry: ``h (..., H)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import Cell, check_sizes, chrono_timescales, glorot_blocks, matmul, orthogonal_blocks, recurrent_diagonal, zeros_carry

Array = jax.Array

#: Order of the three gate blocks along the ``3H`` axis (PyTorch's ``r|z|n``).
GRU_GATES = ("reset", "update", "new")


def gru_recurrence(params, h_prev: Array, xw_t: Array, compute_dtype=None):
    """The module's equations from ``a = xw_t = x_t @ w_x + b_x``.

    Keeps ``h_prev``, ``r``, ``z``, ``n`` and ``u_n`` (the reset gate's multiplicand).
    """
    u = matmul(h_prev, params["w_h"], compute_dtype, h_prev.dtype) + params["b_h"]
    a_r, a_z, a_n = jnp.split(xw_t, 3, axis=-1)
    u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
    r = jax.nn.sigmoid(a_r + u_r)
    z = jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + r * u_n)
    h = (1.0 - z) * n + z * h_prev
    return h, h, {"h_prev": h_prev, "r": r, "z": z, "n": n, "u_n": u_n}


def gru_backward_step(params, res, dh_next: Array, dy: Array, compute_dtype=None):
    """GRU backward step, with ``dh = dh_next + dy = dL/dh_t`` in total::

        dn   = dh ⊙ (1 - z),         dz = dh ⊙ (h_{t-1} - n)
        ds_n = dn ⊙ (1 - n²)                     # s_n = a_n + r ⊙ u_n
        dr   = ds_n ⊙ u_n
        ds_r = dr ⊙ r(1-r),          ds_z = dz ⊙ z(1-z)
        da   = [ds_r | ds_z | ds_n]              # dL/d(x_t w_x + b_x)
        du   = [ds_r | ds_z | ds_n ⊙ r]          # dL/d(h_{t-1} w_h + b_h)
        dh_{t-1} = dh ⊙ z + du @ w_hᵀ

    (``dW_x = Σ x_tᵀ da``, ``db_x = Σ da``, ``dW_h = Σ h_{t-1}ᵀ du``, ``db_h = Σ du``: after the scan.)
    Returns ``(da, du, dh_{t-1})``.
    """
    r, z, n = res["r"], res["z"], res["n"]
    dh = dh_next + dy
    dn = dh * (1.0 - z)
    dz = dh * (res["h_prev"] - n)
    ds_n = dn * (1.0 - n**2)
    dr = ds_n * res["u_n"]
    ds_r = dr * r * (1.0 - r)
    ds_z = dz * z * (1.0 - z)
    da = jnp.concatenate([ds_r, ds_z, ds_n], axis=-1)
    du = jnp.concatenate([ds_r, ds_z, ds_n * r], axis=-1)
    dh_prev = dh * z + matmul(du, params["w_h"], compute_dtype, dh.dtype, transpose_w=True)
    return da, du, dh_prev


def gru_jacobian_diagonal(params, h_prev: Array, xw_t: Array, compute_dtype=None) -> Array:
    """``∂h_t[j] / ∂h_{t-1}[j]``, ``(..., H)``, from one step's gates (equations in the module docstring)."""
    _, _, res = gru_recurrence(params, h_prev, xw_t, compute_dtype)
    r, z, n = res["r"], res["z"], res["n"]
    w_r, w_z, w_n = jnp.split(recurrent_diagonal(params["w_h"], compute_dtype, h_prev.dtype), 3)
    dn = (1.0 - n**2) * (r * (1.0 - r) * w_r * res["u_n"] + r * w_n)
    return z + z * (1.0 - z) * w_z * (h_prev - n) + (1.0 - z) * dn


def init_gru(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> dict:
    """Params for :func:`gru_step`: w_x (I, 3H) Glorot-uniform per block, w_h (H, 3H)
    orthogonal per block, b_x and b_h (3H,) zeros."""
    input_size, hidden_size = check_sizes("init_gru", input_size, hidden_size)
    k_x, k_h = jax.random.split(key)
    return {
        "w_x": glorot_blocks(k_x, input_size, hidden_size, 3, dtype),
        "w_h": orthogonal_blocks(k_h, hidden_size, 3, dtype),
        "b_x": jnp.zeros((3 * hidden_size,), dtype),
        "b_h": jnp.zeros((3 * hidden_size,), dtype),
    }


def chrono_gru(key: Array, params: dict, max_timescale: float) -> dict:
    """``params`` with the chrono update-gate bias (Tallec & Ollivier 2018); weights unchanged.

    Here ``z_t`` keeps ``h_{t-1}`` (``h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}``), so it is
    the keep gate: ``b_x[update] = log u``, ``u ~ U(1, max_timescale - 1)`` per
    unit (``b_h[update]`` is set to 0, so ``log u`` is the gate's whole bias),
    giving unit ``j`` a memory of about ``1 + u_j`` steps from the start.
    """
    hidden = params["w_h"].shape[0]
    log_u = chrono_timescales(key, hidden, max_timescale, params["b_x"].dtype)
    update = slice(hidden, 2 * hidden)
    return {**params, "b_x": params["b_x"].at[update].set(log_u), "b_h": params["b_h"].at[update].set(0.0)}


GRU = Cell(
    name="gru", init=init_gru, zeros_carry=zeros_carry, recurrence=gru_recurrence, num_gates=3,
    param_keys=("w_x", "w_h", "b_x", "b_h"), input_bias="b_x", recurrent_bias="b_h",
    backward_step=gru_backward_step, jacobian_diagonal=gru_jacobian_diagonal, chrono_init=chrono_gru,
)


def gru_step(params: dict, carry: Array, x_t: Array, *, compute_dtype=None) -> tuple[Array, Array]:
    """GRU step ``(params, h_{t-1}, x_t) -> (h_t, y_t)`` in the convention of ``torch.nn.GRU``.

    Equations::

        a   = x_t @ w_x + b_x,   u = h_{t-1} @ w_h + b_h      # (..., 3H), blocks [r|z|n]
        r_t = σ(a_r + u_r),  z_t = σ(a_z + u_z)
        n_t = tanh(a_n + r_t ⊙ u_n)          # r_t multiplies u_n *including* b_h[n]
        h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
        y_t = h_t

    Params:
        w_x: (I, 3H); w_h: (H, 3H); b_x: (3H,); b_h: (3H,); gate order :data:`GRU_GATES`.
    Carry:
        h: (H,) or (batch, H)

    Example (all-zero params: ``z = σ(0) = 0.5`` and ``n = tanh(0) = 0``, so ``h`` halves)::

        >>> import jax.numpy as jnp
        >>> from lstm_jax import gru_step
        >>> params = {"w_x": jnp.zeros((3, 6)), "w_h": jnp.zeros((2, 6)), "b_x": jnp.zeros(6), "b_h": jnp.zeros(6)}
        >>> h, y = gru_step(params, jnp.array([[1.0, -2.0]]), jnp.ones((1, 3)))    # I = 3, H = 2, batch 1
        >>> h.tolist()
        [[0.5, -1.0]]
    """
    return GRU.step(params, carry, x_t, compute_dtype=compute_dtype)
