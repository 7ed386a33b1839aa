"""``"deer"``: the unchanged non-linear cell evaluated parallel-in-time by Newton's method (DEER / quasi-DEER).

Lim et al. (ICLR 2024, "DEER") treat the whole trajectory ``s = (s_0, ..., s_{T-1})``
as the unknown of ``s_t = f(s_{t-1}, x_t)`` (``s`` = the cell's carry flattened
per example, ``D`` wide: ``2H`` for the LSTM's ``(hidden, cell)``, ``H`` for
GRU / RNN). Each Newton iteration linearises every step around the current
guess ``ŝ`` at once::

    s_t ≈ J_t s_{t-1} + (f(ŝ_{t-1}, x_t) - J_t ŝ_{t-1}),     J_t = ∂f/∂s (ŝ_{t-1}, x_t)

and solves that *linear* recurrence with ``jax.lax.associative_scan`` over
``(J_t, b_t)`` pairs (``(A2, b2) ∘ (A1, b1) = (A2 A1, A2 b1 + b2)``): depth
``O(log T)``, work ``O(T D^3)`` (full ``J``) instead of the sequential scan's
depth ``O(T)``. ``method="diagonal"`` is quasi-DEER (Gonzalez et al. 2024,
arXiv 2407.19115): only ``diag(J_t)``, an elementwise scan, ``O(T D)`` memory;
it converges to the same fixed point, in more iterations.

Convergence: the guess starts as the initial carry repeated (or ``init``).
Step ``t`` of the iterate is exact after ``t + 1`` iterations (step 0 is
``f(s_init, x_0)`` from the first one on), so Newton reaches the fixed point in
at most ``T`` iterations in exact arithmetic, usually far fewer. It stops when
the largest change ``max |Δs| / (1 + |s|)`` is ``<= tol``, or after
``max_iters``. In floating point a chaotic recurrence (expanding ``J``) can make
the scan's products of ``J`` overflow or cancel, and Newton never settles.
Then ``on_fail`` decides; there is no silent wrong answer:

* ``"fallback"`` (default): ``lax.cond`` runs the sequential scan instead (so
  the result is the scan's, at the cost of both);
* ``"error"``: raise :class:`DeerNotConverged` (eagerly; under ``jit`` the
  error comes from a ``jax.debug.callback`` when the compiled computation runs,
  as a ``JaxRuntimeError`` carrying the same message).

Gradients (``jax.custom_vjp``, implicit function theorem): at the fixed point
``s* = F(s*, θ)`` the cotangents ``λ_t = dL/ds_t`` solve the reversed linear
recurrence ``λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1}`` (``ḡ_t``: the direct cotangent on
``s_t`` and, through ``y_{t+1}``, on it as the next step's input), again by an
associative scan (``"full"``: one scan with ``Jᵀ``; ``"diagonal"``: iterations
``λ ← solve_diag(ḡ + shift(Jᵀλ - diag(J)λ))`` with ``Jᵀλ`` from a vjp, which end
in at most ``T`` too). The result is checked by its residual, with the same
``on_fail`` rule (fallback: the sequential reverse sweep). Then one vjp of
the step over all ``t`` at ``s*`` gives the params, input and initial-carry
cotangents. Nothing of the Newton iterations is differentiated or stored.

Cost of the Jacobians: ``J_t`` comes from ``jax.jacfwd`` of the cell's own
recurrence (``D`` JVPs per step, ``O(D · H · G H)`` per step per example, and
``T·B·D²`` floats for ``"full"``). ``"diagonal"`` calls the cell's hand-derived
``jacobian_diagonal`` (:mod:`lstm_jax.cells.base`; every built-in cell has one)
over all steps at once: about one step of work. A cell without one gets the same
exact diagonal from ``D`` JVPs one after the other (``lax.map``: ``D`` steps of work).

Options (``layer_impl("deer", method="diagonal", tol=1e-7)``): ``method``
(``"full"``), ``tol`` (``None``: :func:`default_tol` of the carry dtype),
``max_iters`` (``None``: ``min(T + 1, 100)``), ``on_fail`` (``"fallback"``), ``scan``
(``"auto"``: the parallel prefix of :func:`linear_recurrence`).
Warm start is not a layer option (a per-batch array): call
:func:`deer_time_major` with ``init=`` the previous step's ``states``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .deer_solver import (
    DEFAULT_MAX_ITERS, METHODS, ON_FAIL, CarryLayout, Config, DeerNotConverged, check_options, deer_states,
    default_tol, jit_newton,
)

Array = jax.Array

__all__ = [
    "METHODS", "ON_FAIL", "DEFAULT_MAX_ITERS", "CarryLayout", "DeerNotConverged", "check_options", "default_tol",
    "deer_solve", "deer_time_major", "deer_core",
]


# --------------------------------------------------------------------------- entry points


def _prepare(cell, params, xs_tm, carry, mask, compute_dtype, method, tol, max_iters, on_fail, scan, unroll=1):
    check_options(method=method, tol=tol, max_iters=max_iters, on_fail=on_fail, scan=scan)
    layout = CarryLayout.of(carry)
    s0 = layout.flat(carry)
    dtype = s0.dtype
    seq_len, batch = xs_tm.shape[:2]
    xw = cell.input_projection(params, xs_tm, compute_dtype, dtype)
    mask = jnp.ones((seq_len, batch), bool) if mask is None else mask
    cfg = Config(
        cell, layout, compute_dtype, method, float(default_tol(dtype) if tol is None else tol),
        int(min(seq_len + 1, DEFAULT_MAX_ITERS) if max_iters is None else max_iters), on_fail, scan, int(unroll),
    )
    return cfg, xw, s0, mask


def _initial_guess(s0: Array, seq_len: int, init) -> Array:
    if init is None:
        return jnp.broadcast_to(s0, (seq_len,) + s0.shape)
    init = jnp.asarray(init, s0.dtype)
    if init.shape != (seq_len,) + s0.shape:
        raise ValueError(f"deer: init must have shape (T, B, D) = {(seq_len,) + s0.shape}, got {init.shape}")
    return jax.lax.stop_gradient(init)


def deer_solve(cell, params, xs_tm, carry, mask=None, *, method="full", tol=None, max_iters=None, init=None,
               scan="auto", compute_dtype=None):
    """Newton alone, no fallback, no gradient: ``(states (T,B,D), iters, converged)``.

    For experiments (iteration counts). ``xs_tm (T,B,I)``, ``carry`` leaves ``(B, H)``,
    ``mask (T,B)`` or None; ``states[t]`` is the flattened carry after step ``t``.
    """
    cfg, xw, s0, mask = _prepare(cell, params, xs_tm, carry, mask, compute_dtype, method, tol, max_iters, "error", scan)
    return jit_newton(cfg, params, xw, s0, mask, _initial_guess(s0, xs_tm.shape[0], init))


def deer_time_major(cell, params, xs_tm, carry, mask=None, *, method="full", tol=None, max_iters=None,
                    on_fail="fallback", scan="auto", init=None, unroll=1, compute_dtype=None):
    """DEER layer, time-major, differentiable: ``(ys_tm (T,B,H), final_carry, states (T,B,D))``.

    ``states`` is the fixed-point trajectory; a training loop can pass
    ``init=states`` of the previous step (same batch shape) to start Newton
    near the answer (warm start; no gradient flows through ``init``).
    """
    cfg, xw, s0, mask = _prepare(cell, params, xs_tm, carry, mask, compute_dtype, method, tol, max_iters, on_fail,
                                 scan, unroll)
    ys, states = deer_states(cfg, params, xw, s0, mask, _initial_guess(s0, xs_tm.shape[0], init))
    return ys, cfg.layout.unflat(states[-1]), states


def deer_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype, method="full", tol=None,
              max_iters=None, on_fail="fallback", scan="auto"):
    """The ``"deer"`` implementation's time-major core (see the module docstring for the options)."""
    if reverse:  # only without a mask (see lstm_jax.sequence): flip time, run forwards, flip back
        xs_tm = xs_tm[::-1]
    ys, final, _ = deer_time_major(
        cell, params, xs_tm, carry, mask, method=method, tol=tol, max_iters=max_iters, on_fail=on_fail, scan=scan,
        unroll=unroll, compute_dtype=compute_dtype,
    )
    return (ys[::-1] if reverse else ys), final
