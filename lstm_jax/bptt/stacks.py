"""BPTT through stacks (multi-layer, bidirectional): :func:`stack_forward` / :func:`stack_backward`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ..cells import Cell, get_cell
from ..stack import run_stack, zeros_stack_carry
from .layer import Grads, backward, check_cache, forward

Array = jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["layers"], meta_fields=["cell"])
@dataclasses.dataclass(frozen=True)
class StackCache:
    """What :func:`stack_forward` keeps: one :class:`~lstm_jax.bptt.LayerCache` per layer
    (``{"forward": cache, "backward": cache}`` for a bidirectional layer)."""

    cell: Cell
    layers: list


def stack_forward(
    cell: str | Cell,
    params: list,
    xs: Array,
    carry: list | None = None,
    *,
    lengths: Array | None = None,
    compute_dtype=None,
    unroll: int = 1,
):
    """:func:`lstm_jax.layers.apply_stack` (without dropout) with a cache for :func:`stack_backward`.

    Layer k's output sequence is layer k+1's input; a bidirectional layer
    concatenates ``[forward ys | backward ys]`` on the feature axis::

        h^0 = xs;   h^k = layer_k(h^{k-1})   (or [fwd_k(h^{k-1}) | bwd_k(h^{k-1})])

    Returns ``(ys, finals, StackCache)``.
    """
    cell = get_cell(cell)
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (batch, time, features); got shape {xs.shape}")
    if carry is None and isinstance(params, (list, tuple)):
        carry = zeros_stack_carry(cell, params, xs.shape[:1])

    def layer(p, h, c, reverse):
        return forward(cell, p, h, c, lengths=lengths, reverse=reverse, compute_dtype=compute_dtype, unroll=unroll)

    ys, finals, caches = run_stack(layer, params, xs, carry)
    return ys, finals, StackCache(cell=cell, layers=caches)


def stack_backward(cache: StackCache, dys: Array | None, dfinals: list | None = None) -> Grads:
    """BPTT through a stack: layers in reverse order, each layer's ``dxs`` is the ``dys`` of the one below::

        g^K = dys
        for k = K..1:   (dparams_k, g^{k-1}, dcarry0_k) = backward_k(g^k, dfinal_k)
        bidirectional:  g^k = [g_fwd | g_bwd] split on features; g^{k-1} = dxs_fwd + dxs_bwd

    Returns :class:`~lstm_jax.bptt.Grads` with ``params`` and ``carry`` as lists per layer.
    """
    if cache is None:
        raise TypeError("stack_backward: missing cache; pass the cache returned by stack_forward(...)")
    if not isinstance(cache, StackCache):
        raise TypeError(f"stack_backward: cache must be a StackCache from stack_forward, got {type(cache).__name__}")
    layers = cache.layers
    if dfinals is None:
        dfinals = [None] * len(layers)
    if len(dfinals) != len(layers):
        raise ValueError(f"dfinals has {len(dfinals)} layers but the stack has {len(layers)}")
    g = dys
    dparams = [None] * len(layers)
    dcarry = [None] * len(layers)
    for k in reversed(range(len(layers))):
        lc, df = layers[k], dfinals[k]
        if isinstance(lc, dict):
            check_cache(lc.get("forward"), f"stack_backward (layer {k}, forward)")
            check_cache(lc.get("backward"), f"stack_backward (layer {k}, backward)")
            hid = lc["forward"].cell.hidden_size(lc["forward"].params)
            if g is not None:
                g = jnp.asarray(g)
                if g.shape[-1] != 2 * hid:
                    raise ValueError(
                        f"stack_backward: gradient into bidirectional layer {k} has {g.shape[-1]} "
                        f"features, expected 2 * hidden = {2 * hid}"
                    )
            df = df or {}
            gf = backward(lc["forward"], None if g is None else g[..., :hid], df.get("forward"))
            gb = backward(lc["backward"], None if g is None else g[..., hid:], df.get("backward"))
            dparams[k] = {"forward": gf.params, "backward": gb.params}
            dcarry[k] = {"forward": gf.carry, "backward": gb.carry}
            g = gf.xs + gb.xs
        else:
            check_cache(lc, f"stack_backward (layer {k})")
            gl = backward(lc, g, df)
            dparams[k], dcarry[k] = gl.params, gl.carry
            g = gl.xs
    return Grads(params=dparams, xs=g, carry=dcarry)
