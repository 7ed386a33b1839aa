"""The DEER solver behind ``impl="deer"`` (:mod:`lstm_jax.impls.deer`, whose docstring has the maths).

Forward: Newton iterations over the whole trajectory, each a linear recurrence
solved by an associative scan (:func:`newton`, :func:`solve_states`, with the
``on_fail`` rule in :func:`settle`). Backward: the implicit function theorem,
the cotangents solving the reversed linear recurrence (:func:`solve_adjoint`),
wired up as the ``custom_vjp`` :func:`deer_states`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .linear_scan import SCANS, linear_recurrence, shift_back

Array = jax.Array

METHODS = ("full", "diagonal")
ON_FAIL = ("fallback", "error")
#: The iteration cap when ``max_iters=None``: ``min(T + 1, DEFAULT_MAX_ITERS)``.
DEFAULT_MAX_ITERS = 100


class DeerNotConverged(RuntimeError):
    """Newton (or its adjoint solve) did not reach ``tol`` within ``max_iters`` and ``on_fail="error"``."""


def default_tol(dtype) -> float:
    """``max(16 eps, 1e-10)`` of the carry dtype: 1.9e-6 for float32, 1e-10 for float64."""
    return max(16.0 * float(jnp.finfo(dtype).eps), 1e-10)


def check_options(method="full", tol=None, max_iters=None, on_fail="fallback", scan="auto") -> None:
    """One-line ``ValueError`` for a bad option of ``"deer"``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0):
        raise ValueError(f"tol must be a positive number or None, got {tol!r}")
    if max_iters is not None and (
        isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)) or max_iters < 1
    ):
        raise ValueError(f"max_iters must be a positive int or None, got {max_iters!r}")
    if on_fail not in ON_FAIL:
        raise ValueError(f"on_fail must be one of {list(ON_FAIL)}, got {on_fail!r}")
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {list(SCANS)}, got {scan!r}")


# --------------------------------------------------------------------------- the flattened carry


@dataclasses.dataclass(frozen=True)
class CarryLayout:
    """How a carry pytree maps to one ``(..., D)`` state vector: its leaves side by side."""

    treedef: Any
    widths: tuple

    @classmethod
    def of(cls, carry) -> "CarryLayout":
        leaves, treedef = jax.tree_util.tree_flatten(carry)
        return cls(treedef, tuple(int(leaf.shape[-1]) for leaf in leaves))

    def flat(self, carry) -> Array:
        leaves = jax.tree_util.tree_leaves(carry)
        return leaves[0] if len(leaves) == 1 else jnp.concatenate(leaves, axis=-1)

    def unflat(self, s: Array):
        parts = jnp.split(s, np.cumsum(self.widths)[:-1].tolist(), axis=-1) if len(self.widths) > 1 else [s]
        return jax.tree_util.tree_unflatten(self.treedef, parts)


@dataclasses.dataclass(frozen=True)
class Config:
    """The static part of one solve (hashable: a ``nondiff_argnums`` of the custom_vjp)."""

    cell: Any
    layout: CarryLayout
    compute_dtype: Any
    method: str
    tol: float
    max_iters: int
    on_fail: str
    scan: str = "auto"
    unroll: int = 1

    def step(self, params, s_prev: Array, xw_t: Array, m_t: Array):
        """One example, one step: ``(s_prev (D,), xw_t (G*H,), m_t bool) -> (s_t (D,), y_t (H,))``.

        Masked steps (``m_t`` False) freeze the state (``J = I``) and output zero.
        """
        new, y, _ = self.cell.recurrence(params, self.layout.unflat(s_prev), xw_t, self.compute_dtype)
        s = self.layout.flat(new)
        return jnp.where(m_t, s, s_prev), jnp.where(m_t, y, jnp.zeros_like(y))

    def steps(self, params, prev: Array, xw: Array, mask: Array):
        """:meth:`step` for all ``(T, B)`` at once: ``prev (T,B,D), xw (T,B,GH), mask (T,B)``."""
        per_b = jax.vmap(self.step, in_axes=(None, 0, 0, 0))
        return jax.vmap(per_b, in_axes=(None, 0, 0, 0))(params, prev, xw, mask)

    def diagonal(self, params, s_prev: Array, xw_t: Array, m_t: Array) -> Array:
        """One example, one step: the cell's ``jacobian_diagonal`` flattened, ``(D,)``; 1 where masked (``J = I``)."""
        diag = self.cell.jacobian_diagonal(params, self.layout.unflat(s_prev), xw_t, self.compute_dtype)
        return jnp.where(m_t, self.layout.flat(diag), 1.0)

    def jacobians(self, params, prev: Array, xw: Array, mask: Array):
        """``(J, f)`` at every step: ``J (T,B,D,D)`` (``"full"``) or its diagonal ``(T,B,D)``; ``f (T,B,D)``."""

        def state(s, x, m):
            return self.step(params, s, x, m)[0]

        batched = jax.vmap(jax.vmap(state))
        if self.method == "full":  # has_aux: f from the same evaluation
            return jax.vmap(jax.vmap(jax.jacfwd(lambda s, x, m: (state(s, x, m),) * 2, has_aux=True)))(prev, xw, mask)
        if self.cell.jacobian_diagonal is not None:  # XLA merges the step inside it with f's (CSE): one step of work
            return jax.vmap(jax.vmap(functools.partial(self.diagonal, params)))(prev, xw, mask), batched(prev, xw, mask)

        def column(i):  # no analytic diagonal: the exact one, a basis direction at a time (D JVPs of work)
            tangent = jnp.zeros_like(prev).at[..., i].set(1.0)
            return jax.jvp(lambda s: batched(s, xw, mask), (prev,), (tangent,))[1][..., i]

        diag = jnp.moveaxis(jax.lax.map(column, jnp.arange(prev.shape[-1])), 0, -1)
        return diag, batched(prev, xw, mask)


def _previous(s0: Array, states: Array) -> Array:
    """``prev_t = s_{t-1}``: ``(T, B, D)`` with ``prev_0 = s0``."""
    return jnp.concatenate([s0[None], states[:-1]], axis=0)


def _scaled_change(new: Array, old: Array) -> Array:
    return jnp.max(jnp.abs(new - old) / (1.0 + jnp.abs(new)))


# --------------------------------------------------------------------------- the forward: Newton


def newton(cfg: Config, params, xw: Array, s0: Array, mask: Array, init: Array):
    """DEER / quasi-DEER iterations from ``init (T,B,D)``: ``(states (T,B,D), iters, converged)``."""
    diagonal = cfg.method == "diagonal"

    def linearised_solve(states):
        prev = _previous(s0, states)
        jac, f = cfg.jacobians(params, prev, xw, mask)
        offset = jac * prev if diagonal else jnp.einsum("...ij,...j->...i", jac, prev)
        # Step 0 starts from the known s0: b_0 = f(s0, x_0) and a_0 = 0 make it exact.
        return linear_recurrence(jac.at[0].set(0.0), (f - offset).at[0].set(f[0]), diagonal=diagonal, scan=cfg.scan)

    def cond(state):
        _, iters, change = state
        return (iters < cfg.max_iters) & ~(change <= cfg.tol)  # NaN never counts as converged

    def body(state):
        states, iters, _ = state
        new = linearised_solve(states)
        return new, iters + 1, _scaled_change(new, states)

    start = (init, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, init.dtype))
    states, iters, change = jax.lax.while_loop(cond, body, start)
    return states, iters, change <= cfg.tol


def sequential_states(cfg: Config, params, xw: Array, s0: Array, mask: Array) -> Array:
    """The plain scan of :meth:`Config.step` (the fallback): ``states (T,B,D)``."""
    per_b = jax.vmap(cfg.step, in_axes=(None, 0, 0, 0))

    def body(s, inputs):
        s_new = per_b(params, s, *inputs)[0]
        return s_new, s_new

    return jax.lax.scan(body, s0, (xw, mask), unroll=cfg.unroll)[1]


def _failure_message(cfg: Config, what: str) -> str:
    return (
        f"deer ({cfg.method}): {what} did not converge to tol={cfg.tol:g} in max_iters={cfg.max_iters}; "
        "use on_fail='fallback' (the sequential scan's answer), a larger max_iters or tol, or another impl"
    )


def settle(cfg: Config, ok, result, fallback: Callable, what: str):
    """``result`` where ``ok``; otherwise ``on_fail``: ``fallback()`` (the sequential answer) or raise.

    Eagerly (a concrete ``ok``) the choice is made here, so only the branch taken
    runs and the error is a plain :class:`DeerNotConverged`. Traced, the fallback
    is a ``lax.cond`` and the error a ``jax.debug.callback`` that raises when
    the compiled computation runs.
    """
    if not isinstance(ok, jax.core.Tracer):
        if bool(ok):
            return result
        if cfg.on_fail == "error":
            raise DeerNotConverged(_failure_message(cfg, what))
        return fallback()
    if cfg.on_fail == "fallback":
        return jax.lax.cond(ok, lambda: result, fallback)

    def check(ok):
        if not bool(ok):
            raise DeerNotConverged(_failure_message(cfg, what))

    jax.debug.callback(check, ok)
    return result


# Jitted with the static Config, so eager calls compile each piece once (not op by op) and
# only the branch that settle() takes runs; inside an outer jit they are inlined.
jit_newton = jax.jit(newton, static_argnums=0)
_sequential = jax.jit(sequential_states, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(cfg: Config, params, xw, s0, mask, states):
    """One parallel evaluation at the fixed point: ``(ys, states)``, the states then exactly ``f(prev)``."""
    out_states, ys = cfg.steps(params, _previous(s0, states), xw, mask)
    return ys, out_states


def solve_states(cfg: Config, params, xw, s0, mask, init) -> Array:
    """Newton, then ``on_fail`` (see the module docstring): the fixed-point trajectory ``(T,B,D)``."""
    states, _, converged = jit_newton(cfg, params, xw, s0, mask, init)
    return settle(cfg, converged, states, lambda: _sequential(cfg, params, xw, s0, mask), "Newton")


# --------------------------------------------------------------------------- custom_vjp (implicit function theorem)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def deer_states(cfg: Config, params, xw, s0, mask, init):
    return _evaluate(cfg, params, xw, s0, mask, solve_states(cfg, params, xw, s0, mask, init))


def _deer_fwd(cfg, params, xw, s0, mask, init):
    ys, states = _evaluate(cfg, params, xw, s0, mask, solve_states(cfg, params, xw, s0, mask, init))
    return (ys, states), (params, xw, s0, mask, states)


def solve_adjoint(cfg: Config, params, xw, mask, prev, vjp_prev: Callable, rhs: Array, dys: Array) -> Array:
    """``λ (T,B,D)`` with ``λ_t = rhs_t + J_{t+1}ᵀ λ_{t+1}`` (``rhs`` already holds ``ḡ``), checked by its residual."""
    diagonal = cfg.method == "diagonal"
    jac, _ = cfg.jacobians(params, prev, xw, mask)
    if not diagonal:
        jac = jnp.swapaxes(jac, -1, -2)
    coeff = shift_back(jac)[::-1]  # the reversed recurrence as a forward one in flipped time

    def jt_lam(lam):  # J_tᵀ λ_t for every t, by one vjp
        return vjp_prev((lam, jnp.zeros_like(dys)))[0]

    def solve(r):
        return linear_recurrence(coeff, r[::-1], diagonal=diagonal, scan=cfg.scan)[::-1]

    def residual(lam, jl):
        scale = jnp.maximum(jnp.max(jnp.abs(lam)), jnp.max(jnp.abs(rhs)))
        return jnp.max(jnp.abs(lam - rhs - shift_back(jl))), scale

    def not_done(state):
        lam, jl, iters = state
        res, scale = residual(lam, jl)
        return (iters < cfg.max_iters) & ~(res <= cfg.tol * scale)

    def body(state):  # quasi-Newton on the adjoint: the diagonal exactly, the rest from the last iterate
        lam, jl, iters = state
        lam = solve(rhs + shift_back(jl - jac * lam))
        return lam, jt_lam(lam), iters + 1

    if diagonal:
        lam, jl, _ = jax.lax.while_loop(not_done, body, (rhs, jt_lam(rhs), jnp.asarray(0, jnp.int32)))
    else:  # one exact solve with the full Jᵀ
        lam = solve(rhs)
        jl = jt_lam(lam)
    res, scale = residual(lam, jl)
    return lam, res <= cfg.tol * scale


def sequential_adjoint(cfg: Config, params, xw, mask, prev, rhs, dys) -> Array:
    """The reverse sweep ``λ_t = rhs_t + J_{t+1}ᵀ λ_{t+1}``, one vjp per step (the fallback)."""
    per_b = jax.vmap(cfg.step, in_axes=(None, 0, 0, 0))

    def body(back, inputs):  # back = J_{t+1}ᵀ λ_{t+1} + K_{t+1}ᵀ ȳ_{t+1} is already in rhs / here
        prev_t, xw_t, m_t, r_t, dy_t = inputs
        lam_t = r_t + back
        _, vjp = jax.vjp(lambda s: per_b(params, s, xw_t, m_t), prev_t)
        return vjp((lam_t, jnp.zeros_like(dy_t)))[0], lam_t

    back0 = jnp.zeros_like(rhs[0])
    return jax.lax.scan(body, back0, (prev, xw, mask, rhs, dys), reverse=True, unroll=cfg.unroll)[1]


def _linearised(cfg: Config, params, xw, s0, mask, states):
    """``(prev, vjp)`` of all steps at the fixed point, w.r.t. ``(params, prev, xw)``."""
    prev = _previous(s0, states)
    return prev, jax.vjp(lambda p, pv, x: cfg.steps(p, pv, x, mask), params, prev, xw)[1]


@functools.partial(jax.jit, static_argnums=0)
def _adjoint(cfg: Config, params, xw, s0, mask, states, dys, dstates):
    """``(λ, ok, rhs)``: the adjoint by the parallel solve, whether its residual passed, and ``ḡ``."""
    prev, vjp_all = _linearised(cfg, params, xw, s0, mask, states)

    def vjp_prev(cts):
        return (vjp_all(cts)[1],)

    # ḡ_t: the direct cotangent on s_t plus what reaches it through y_{t+1} (s_t is step t+1's input).
    rhs = dstates + shift_back(vjp_prev((jnp.zeros_like(states), dys))[0])
    lam, ok = solve_adjoint(cfg, params, xw, mask, prev, vjp_prev, rhs, dys)
    return lam, ok, rhs


@functools.partial(jax.jit, static_argnums=0)
def _sequential_lam(cfg: Config, params, xw, s0, mask, states, rhs, dys):
    return sequential_adjoint(cfg, params, xw, mask, _previous(s0, states), rhs, dys)


@functools.partial(jax.jit, static_argnums=0)
def _cotangents(cfg: Config, params, xw, s0, mask, states, lam, dys):
    """One vjp of all steps at the fixed point: ``(dparams, dxw, ds0)``."""
    dparams, dprev, dxw = _linearised(cfg, params, xw, s0, mask, states)[1]((lam, dys))
    return dparams, dxw, dprev[0]


def _deer_bwd(cfg, saved, cotangents):
    params, xw, s0, mask, states = saved
    dys, dstates = cotangents
    lam, ok, rhs = _adjoint(cfg, params, xw, s0, mask, states, dys, dstates)
    lam = settle(cfg, ok, lam, lambda: _sequential_lam(cfg, params, xw, s0, mask, states, rhs, dys),
                 "the adjoint (gradient) solve")
    dparams, dxw, ds0 = _cotangents(cfg, params, xw, s0, mask, states, lam, dys)
    return dparams, dxw, ds0, None, jnp.zeros_like(states)


deer_states.defvjp(_deer_fwd, _deer_bwd)
