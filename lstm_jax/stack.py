"""Stacks of layers: their params and carries, and the one loop that runs a stack.

A stack's params are a list with one entry per layer: the cell's params dict,
or for a bidirectional layer ``{"forward": params, "backward": params}``. The
carry mirrors that structure. Layer ``k``'s output sequence is layer ``k+1``'s
input; a bidirectional layer concatenates ``[forward ys | backward ys]`` on the
feature axis::

    h^0 = xs;   h^k = layer_k(h^{k-1})   (or [fwd_k(h^{k-1}) | bwd_k(h^{k-1})])

:func:`run_stack` is that loop, shared by :func:`lstm_jax.layers.apply_stack`
(any layer implementation, dropout between layers) and
:func:`lstm_jax.bptt.stack_forward` (which also keeps each layer's cache).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from .cells import CELLS, Cell, get_cell
from .cells.base import check_max_timescale, check_sizes, positive_size

Array = jax.Array

DIRECTIONS = ("forward", "backward")


def is_bidirectional(layer_params) -> bool:
    return isinstance(layer_params, dict) and set(layer_params) == set(DIRECTIONS)


def init_stack(
    key: Array,
    cell: str | Cell,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype=jnp.float32,
) -> list:
    """Params for a stack: a list with one entry per layer.

    Each entry is the cell's params dict, or for a bidirectional stack
    ``{"forward": params, "backward": params}``. Layer 0 takes ``input_size``
    features; layer k > 0 takes ``hidden_size`` (``2 * hidden_size`` if
    bidirectional).

    Example::

        >>> import jax
        >>> params = init_stack(jax.random.PRNGKey(0), "lstm", input_size=3, hidden_size=4, num_layers=2)
        >>> [{k: v.shape for k, v in layer.items()} for layer in params]   # gates fused as [i|f|g|o]
        [{'w_x': (3, 16), 'w_h': (4, 16), 'b': (16,)}, {'w_x': (4, 16), 'w_h': (4, 16), 'b': (16,)}]
        >>> float(params[0]["b"][4:8].min())                             # the forget-gate bias starts at 1
        1.0
    """
    cell = get_cell(cell)
    num_layers = positive_size("init_stack", "num_layers", num_layers)
    input_size, hidden_size = check_sizes("init_stack", input_size, hidden_size)
    layers = []
    in_size = input_size
    for layer_key in jax.random.split(key, num_layers):
        if bidirectional:
            k_f, k_b = jax.random.split(layer_key)
            layers.append(
                {
                    "forward": cell.init(k_f, in_size, hidden_size, dtype),
                    "backward": cell.init(k_b, in_size, hidden_size, dtype),
                }
            )
        else:
            layers.append(cell.init(layer_key, in_size, hidden_size, dtype))
        in_size = hidden_size * (2 if bidirectional else 1)
    return layers


def chrono_cells() -> list[str]:
    """The registered cells that have a chrono init (a keep gate to set), e.g. ``['lstm', 'gru']``."""
    return [name for name, c in CELLS.items() if c.chrono_init is not None]


def check_chrono_init(cell: str | Cell, max_timescale: float) -> Cell:
    """The cell, when :func:`chrono_init_stack` applies to it at ``max_timescale``; else a one-line
    ``ValueError`` (a cell without a keep gate, or a timescale below 3 steps). A config that holds the
    setting calls this when it is built (:class:`lstm_jax.models.classifier.ClassifierConfig`), so a bad
    one fails before any params are drawn."""
    cell = get_cell(cell)
    if cell.chrono_init is None:
        raise ValueError(f"chrono init: cell {cell.name!r} has no keep gate to set; cells with one: {chrono_cells()}")
    check_max_timescale(max_timescale)
    return cell


def chrono_init_stack(key: Array, cell: str | Cell, params: Sequence, max_timescale: float) -> list:
    """A stack's params with every layer's gate biases set by the cell's chrono init.

    ``cell.chrono_init`` (e.g. :func:`lstm_jax.cells.lstm.chrono_lstm`) draws each
    layer's (and direction's) memory ranges with its own key; weights are unchanged.
    """
    cell = check_chrono_init(cell, max_timescale)
    out = []
    for layer_key, p in zip(jax.random.split(key, len(params)), params):
        if is_bidirectional(p):
            keys = dict(zip(DIRECTIONS, jax.random.split(layer_key)))
            out.append({d: cell.chrono_init(keys[d], p[d], max_timescale) for d in DIRECTIONS})
        else:
            out.append(cell.chrono_init(layer_key, p, max_timescale))
    return out


def zeros_stack_carry(cell: str | Cell, params: Sequence, batch_shape: tuple = (), dtype=None) -> list:
    """Zero initial carry for a stack, mirroring the params structure."""
    cell = get_cell(cell)

    def zeros(p):
        return cell.zeros_carry(cell.hidden_size(p), batch_shape, dtype or p["w_x"].dtype)

    return [{d: zeros(p[d]) for d in DIRECTIONS} if is_bidirectional(p) else zeros(p) for p in params]


def check_stack(params, carry) -> None:
    """The stack-level structure: a non-empty list of layers, a carry with one entry per layer,
    a ``{"forward", "backward"}`` carry for every bidirectional layer."""
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise TypeError(
            "params must be a non-empty list of per-layer params (see init_stack); "
            f"got {type(params).__name__}"
        )
    if carry is None:
        return
    if len(carry) != len(params):
        raise ValueError(f"carry has {len(carry)} layers but params has {len(params)}")
    for k, (p, c) in enumerate(zip(params, carry)):
        if is_bidirectional(p) and not (isinstance(c, dict) and set(c) == set(DIRECTIONS)):
            raise TypeError(
                f"layer {k} is bidirectional, so its carry must be a dict {{'forward': carry, "
                f"'backward': carry}} (see zeros_stack_carry); got {type(c).__name__}"
            )


def run_stack(
    layer: Callable, params: Sequence, xs: Array, carry: Sequence, *, between: Callable | None = None
) -> tuple[Array, list, list]:
    """Run ``layer(params, xs, carry, reverse) -> (ys, final, extra)`` through a stack.

    ``between(k, h) -> h`` (if given) is applied to every layer's output except
    the last (e.g. dropout). Returns ``(ys, finals, extras)``: the last
    layer's outputs, and per-layer lists structured like ``carry``.
    """
    check_stack(params, carry)
    finals, extras = [], []
    h = xs
    for k, (layer_params, layer_carry) in enumerate(zip(params, carry)):
        if is_bidirectional(layer_params):
            ys_f, fin_f, ext_f = layer(layer_params["forward"], h, layer_carry["forward"], False)
            ys_b, fin_b, ext_b = layer(layer_params["backward"], h, layer_carry["backward"], True)
            h = jnp.concatenate([ys_f, ys_b], axis=-1)
            finals.append({"forward": fin_f, "backward": fin_b})
            extras.append({"forward": ext_f, "backward": ext_b})
        else:
            h, fin, ext = layer(layer_params, h, layer_carry, False)
            finals.append(fin)
            extras.append(ext)
        if between is not None and k < len(params) - 1:
            h = between(k, h)
    return h, finals, extras
