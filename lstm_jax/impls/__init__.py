"""Layer implementations: interchangeable ways to run one cell over time, and their one registry.

Every implementation is called the same way::

    impl(cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None)
        -> (ys (B, T, H), final_carry)

and must agree with ``"scan"`` (the reference) in outputs, final carry and
gradients; ``tests/test_impls.py`` checks every entry of :data:`IMPLS`. The
shared front (:func:`lstm_jax.sequence.run_layer`) validates the inputs and
handles the batch axis, ``reverse`` and ``lengths``, so an implementation is
just a time-major *core*::

    core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype, **options)
        -> (ys_tm (T, B, H), final_carry)

=========== ==================================================================
``scan``    the reference: the cell's readable step under ``lax.scan``, autodiff
``hoisted`` input projection as one matmul before the scan, autodiff
``manual``  hoisted forward + the hand-derived BPTT (``jax.custom_vjp``)
``remat``   checkpointed segments (options ``segment``, ``inner``), O(sqrt T) memory
``parallel`` associative scan over time (option ``space``); only cells linear in the
            state (``min_gru``, ``min_lstm``), see :mod:`.parallel_scan`
``deer``    parallel-in-time Newton (DEER / quasi-DEER), implicit-function gradients
``cudnn``   cuDNN's fused LSTM (``jax.experimental.rnn.lstm``); LSTM only, CUDA GPUs
            only, the ``fp32`` policy only, see :mod:`.cudnn`
``onednn``  oneDNN's fused LSTM / GRU / RNN primitives through XLA's FFI; CPU only,
            ``fp32`` and ``bf16``, calls with ``lengths`` run ``manual``, see :mod:`.onednn`
=========== ==================================================================

``impl=None`` (the default of ``apply_stack``, ``scan_layer`` and the model
helpers; ``layer_impl(None)``) runs the fastest of these for the call by a
fixed rule, :func:`default_impl` (:mod:`.default`): ``onednn`` on a CPU where
it runs, else ``manual``; ``parallel`` on a GPU for the cells linear in the
state. ``"scan"`` stays the named reference.

An implementation that runs only some cells says so with ``supports(cell)``
(and ``requirement``, the reason in words); any other cell is refused with one
``ValueError`` naming the implementations that do run it, after the inputs
have been validated (so a bad input gets the same message from every impl).
An implementation that runs only on some machines says so with
``available() -> str | None`` (``None``: it runs here; else the reason it
cannot); called here it is refused the same way, with that reason, and the
test suite skips it with that reason. ``precisions`` names the precision
policies it has (:mod:`lstm_jax.precision`); :func:`layer_impl` refuses any other.

To add one: write its core in a module here and add a :class:`LayerImpl` to
:data:`IMPLS` (:func:`register` does it from outside the package).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable

import jax

from ..cells import CELLS, get_cell
from ..precision import PRECISIONS, get_precision
from ..sequence import run_layer
from .cudnn import REQUIREMENT as _CUDNN_REQUIREMENT
from .cudnn import cudnn_core
from .cudnn import supports as _cudnn_supports
from .cudnn import unavailable_reason as _cudnn_unavailable
from .default import default_for_call, default_impl
from .deer import check_options as _deer_options
from .deer import deer_core
from .hoisted import hoisted_core
from .manual import manual_core
from .onednn import REQUIREMENT as _ONEDNN_REQUIREMENT
from .onednn import onednn_core
from .onednn import precisions as _onednn_precisions
from .onednn import supports as _onednn_supports
from .onednn import unavailable_reason as _onednn_unavailable
from .parallel_scan import REQUIREMENT as _PARALLEL_REQUIREMENT
from .parallel_scan import check_options as _parallel_options
from .parallel_scan import parallel_core
from .parallel_scan import supports as _parallel_supports
from .remat import check_options as _remat_options
from .remat import default_segment, remat_core
from .scan import scan_core, scan_layer, scan_time_major


def _no_options() -> None:
    return None


def _any_cell(cell) -> bool:
    return True


def _runs_here() -> None:
    return None


def _refuse(impl: "LayerImpl", cell, *args, **kwargs):
    """Stands in for the core of an impl that cannot run ``cell``: raised once the inputs are validated."""
    runs = [name for name, other in IMPLS.items() if other.supports(cell)]
    cells = [name for name, other in CELLS.items() if impl.supports(other)]
    raise ValueError(
        f"layer impl {impl.name!r} cannot run cell {cell.name!r}: it runs only {impl.requirement}: "
        f"{', '.join(cells) or 'none registered'}; impls that run {cell.name!r}: {', '.join(runs)}"
    )


def _unavailable(message: str, cell, *args, **kwargs):
    """Stands in for the core of an impl that cannot run on this machine: raised once the inputs are validated."""
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class LayerImpl:
    """One layer implementation: its core, a one-line summary and its options.

    ``options`` are the keyword options bound by :func:`layer_impl` (name, value pairs);
    ``check_options(**options)`` validates them (``ValueError`` on a bad one).
    ``supports(cell) -> bool``: whether it runs that cell (default: every cell);
    ``requirement``: what it needs of a cell, in words, for the refusal message.
    ``precision`` is the policy (:mod:`lstm_jax.precision`) used when a call
    gives no ``compute_dtype`` of its own; ``precisions`` the policies it has.
    ``available() -> str | None``: ``None`` if it runs on this machine, else why
    not (completing "layer impl '<name>' ..."; see :meth:`unavailable`).
    """

    name: str
    core: Callable
    summary: str
    check_options: Callable = _no_options
    options: tuple = ()
    supports: Callable = _any_cell
    requirement: str = ""
    precision: str = "fp32"
    precisions: tuple = tuple(PRECISIONS)
    available: Callable[[], str | None] = _runs_here

    def unavailable(self) -> str | None:
        """``None`` if this impl runs on this machine, else the one-line reason it cannot."""
        reason = self.available()
        return None if reason is None else f"layer impl {self.name!r} {reason}"

    def __call__(
        self, cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None,
        checked_lengths=False,
    ):
        cell = get_cell(cell)
        if not self.supports(cell):
            core = functools.partial(_refuse, self)
        elif (reason := self.unavailable()) is not None:
            core = functools.partial(_unavailable, reason)
        else:
            core = self.core
        if compute_dtype is None:
            compute_dtype = get_precision(self.precision).compute_dtype
        return run_layer(
            core, cell, params, xs, carry, reverse=reverse, lengths=lengths, unroll=unroll,
            compute_dtype=compute_dtype, checked_lengths=checked_lengths, **dict(self.options),
        )

    def with_options(self, **options) -> "LayerImpl":
        merged = {**dict(self.options), **options}
        valid = list(inspect.signature(self.check_options).parameters)
        unknown = sorted(set(merged) - set(valid))
        if unknown:  # a misspelt option: name the valid ones rather than Python's "unexpected keyword"
            raise ValueError(f"layer impl {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options are: {', '.join(valid) if valid else '(none)'}")
        self.check_options(**merged)
        return dataclasses.replace(self, options=tuple(sorted(merged.items())))


IMPLS: dict[str, LayerImpl] = {}


def register(impl: LayerImpl) -> LayerImpl:
    """Add ``impl`` to :data:`IMPLS` (the test suite checks every entry against ``"scan"``)."""
    if impl.name in IMPLS:
        raise ValueError(f"layer impl {impl.name!r} is already registered")
    IMPLS[impl.name] = impl
    return impl


register(LayerImpl("scan", scan_core, "the cell's readable step under lax.scan; autodiff (the reference)"))
register(LayerImpl("hoisted", hoisted_core, "input projection as one matmul before the scan; autodiff"))
register(LayerImpl("manual", manual_core, "hoisted forward, hand-derived BPTT as a custom_vjp"))
register(LayerImpl("remat", remat_core, "checkpointed segments of ~sqrt(T) steps; O(sqrt T) memory", _remat_options))
register(LayerImpl(
    "parallel", parallel_core, "associative scan over time (log space); cells linear in the state only",
    _parallel_options, supports=_parallel_supports, requirement=_PARALLEL_REQUIREMENT,
))
register(LayerImpl("deer", deer_core, "parallel-in-time Newton (DEER); options method, tol, max_iters, on_fail",
                   _deer_options))
register(LayerImpl(
    "cudnn", cudnn_core, "cuDNN's fused LSTM via jax.experimental.rnn; CUDA GPUs, float32 only",
    supports=_cudnn_supports, requirement=_CUDNN_REQUIREMENT, precisions=("fp32",), available=_cudnn_unavailable,
))
register(LayerImpl(
    "onednn", onednn_core, "oneDNN's fused LSTM/GRU/RNN via XLA FFI; CPU, float32 and bf16, lengths run 'manual'",
    supports=_onednn_supports, requirement=_ONEDNN_REQUIREMENT, precisions=_onednn_precisions(),
    available=_onednn_unavailable,
))


def _default_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype):
    """The core of ``impl=None``: the core of :func:`default_for_call`'s pick for this call's cell, dtypes and mask."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    name = default_for_call(cell, dtype, compute_dtype, lengths=mask is not None)
    return IMPLS[name].core(cell, params, xs_tm, carry, mask, reverse, unroll=unroll, compute_dtype=compute_dtype)


#: What ``impl=None`` runs: per call, the impl :func:`default_impl` picks (not in :data:`IMPLS`: it is none of its own).
DEFAULT = LayerImpl("default", _default_core, "the fastest impl for the call here, by a fixed rule (default_impl)")


def layer_impl(name: str | LayerImpl | None, *, precision: str | None = None, **options) -> LayerImpl:
    """The layer implementation called ``name``, with ``options`` bound (``layer_impl("remat", segment=16)``)
    and, if given, a precision policy (``layer_impl("manual", precision="bf16")``). ``None``: the library's
    default, the impl :func:`default_impl` picks for each call (:data:`DEFAULT`).

    Example (pass the result as ``apply_stack(..., impl=...)``)::

        >>> import jax, jax.numpy as jnp
        >>> from lstm_jax import apply_stack, init_stack, layer_impl
        >>> remat = layer_impl("remat", segment=4)          # checkpoint every 4 steps
        >>> remat.name, remat.options
        ('remat', (('segment', 4),))
        >>> params = init_stack(jax.random.PRNGKey(0), "lstm", input_size=3, hidden_size=4)
        >>> ys, _ = apply_stack("lstm", params, jnp.ones((2, 5, 3)), impl=remat)
        >>> ys.shape
        (2, 5, 4)
        >>> layer_impl("remat", segmnt=4)
        Traceback (most recent call last):
        ValueError: layer impl 'remat' has no option 'segmnt'; its options are: segment, inner
    """
    if isinstance(name, LayerImpl):
        impl = name
    elif name is None:
        impl = DEFAULT
    else:
        try:
            impl = IMPLS[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown layer impl {name!r}; choose one of {sorted(IMPLS)}") from None
    impl = impl.with_options(**options) if options else impl
    if precision is not None:
        policy = get_precision(precision).name
        if policy not in impl.precisions:
            others = [n for n, other in IMPLS.items() if policy in other.precisions]
            raise ValueError(
                f"layer impl {impl.name!r} has no {policy!r} precision policy (it runs {', '.join(impl.precisions)}); "
                f"impls with {policy!r}: {', '.join(others)}"
            )
        impl = dataclasses.replace(impl, precision=policy)
    return impl


__all__ = [
    "IMPLS", "LayerImpl", "layer_impl", "register", "default_impl", "DEFAULT",
    "scan_layer", "scan_time_major", "default_segment",
]
