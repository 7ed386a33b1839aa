"""The training scripts' layer implementation and precision: a fixed rule by default, timing when asked.

**By default** (no ``--impl`` / ``--precision``) :func:`rule` decides from the
backend, the cell and the CPU's flags only, so the same command on the same
machine always trains on the same code path (timing at start-up could pick
another one under load). The implementation is the library's own default,
:func:`lstm_jax.impls.default_impl` (the table and its reasons are in
docs/performance.md); the scripts add the precision, which the library never
switches by itself: ``bf16`` where the CPU has bf16 dot products
(``avx512_bf16`` or ``amx_bf16``: ``auto`` chose manual/bf16 at most shapes
there, e.g. 11.8 vs 15.6 ms at Fashion-MNIST H=128; ``onednn``'s LSTM was
1.67-3.00x ``manual`` in bf16, docs/onednn.md#speed), except oneDNN's GRU,
which stays **fp32** (oneDNN 3.2 has no fast bf16 GRU: its fp32 GRU was
1.00-1.46x ``manual`` bf16, its bf16 GRU 0.78-1.02x); ``fp32`` elsewhere
(XLA's bf16 matmul is slower than fp32 on CPUs without them; on an H200 bf16
was slower than fp32, 0.81-1.06x).

A given ``--impl`` / ``--precision`` is used as given (the other follows the
rule, or is timed if ``auto``). In a multi-process job the choice is made by
process 0 and shared (:func:`lstm_jax.distributed.multiprocess.decide_on_main`): hosts
with different CPUs, or timings that differ, cannot put processes on
different code paths.

**``--impl auto`` / ``--precision auto``** (opt-in) measure instead:
the fastest layer implementation and precision policy depend on the machine
and on the problem size. :func:`choose` times one training step
(``value_and_grad`` of one layer at the run's ``T, B, I, H``, the problem of
:func:`experiments.common.harness.layer_problem`) for every candidate
``(impl, precision)`` that runs the cell here: all are compiled and warmed up
first, then timed in interleaved rounds (one call of each per round, so load
that comes and goes hits them alike), and the smallest median wins. Candidates,
in order of preference (the first one wins ties within :data:`TIE_TOLERANCE`
and problems too small to time):

* a cell linear in its state (``min_gru``, ``min_lstm``): ``parallel``, ``manual``;
* any other cell: ``cudnn`` (on a GPU, LSTM only), ``onednn`` (on a CPU with the extra), ``manual``, ``scan`` (the reference);
* each with every policy of :data:`lstm_jax.precision.PRECISIONS` (``fp32``, ``bf16``) that the impl offers.

A problem with less than :data:`MIN_TIMED_FLOPS` matmul FLOPs per forward pass
is not timed (compilation would cost more than the choice could save, and
its step time is mostly overhead): it gets the first candidate. What was
chosen, how, and every timing land in the run's ``results.json`` (``"layer"``).
"""

from __future__ import annotations

import statistics

import jax

from lstm_jax.distributed import multiprocess
from lstm_jax.cells import get_cell
from lstm_jax.impls import IMPLS, default_impl, layer_impl
from lstm_jax.impls.onednn import cpu_has_bf16
from lstm_jax.precision import PRECISIONS

from .harness import forward_flops, layer_problem, time_calls

AUTO = "auto"

#: ``impl`` / ``precision`` value meaning "the default rule" (:func:`rule`); the scripts' flags default to it.
RULE = "default"

#: Forward-pass matmul FLOPs below which the first candidate is taken without timing.
MIN_TIMED_FLOPS = 5e7

#: Relative step-time difference below which the earlier (preferred) candidate wins: on a
#: shared 2-core machine medians of a few calls differ by a few % between identical runs.
TIE_TOLERANCE = 0.03

#: Preference order of the layer implementations, by whether the cell is linear in its state.
PREFERENCE = {True: ("parallel", "manual"), False: ("cudnn", "onednn", "manual", "scan")}


def candidates(cell, impl: str = AUTO, precision: str = AUTO) -> list[tuple[str, str]]:
    """The ``(impl, precision)`` pairs :func:`choose` times for ``cell``, preferred first.

    A given ``impl`` / ``precision`` is kept as given (an unknown or unsupported
    one is then refused by :func:`lstm_jax.impls.layer_impl` with its reason);
    ``"auto"`` precision takes only the policies the impl offers.
    """
    cell = get_cell(cell)
    impls = [impl] if impl != AUTO else [
        name for name in PREFERENCE[bool(cell.linear_recurrence)]
        if name in IMPLS and IMPLS[name].supports(cell) and IMPLS[name].available() is None
    ]
    pairs = []
    for name in impls:
        offered = IMPLS[name].precisions if name in IMPLS else PRECISIONS
        pairs += [(name, p) for p in ([precision] if precision != AUTO else [p for p in PRECISIONS if p in offered])]
    return pairs


#: Precision the scripts' rule takes with ``onednn`` on a CPU with bf16 dots (its bf16 GRU is its slow one).
ONEDNN_ON_CPU = {"lstm": "bf16", "gru": "fp32", "rnn": "bf16"}


def rule(cell, impl: str = RULE, *, backend: str | None = None, bf16_dots: bool | None = None,
         onednn: bool | None = None) -> tuple[str, str]:
    """The default ``(impl, precision)`` for ``cell`` (see the module docstring): a pure rule, nothing timed.

    ``impl``: keep this impl and choose only its precision (else the library's
    :func:`~lstm_jax.impls.default_impl` for float32). ``backend`` (default
    ``jax.default_backend()``) and ``bf16_dots`` (default: the CPU's
    ``avx512_bf16`` / ``amx_bf16`` flags) and ``onednn`` (default: whether
    ``IMPLS["onednn"]`` runs here) are arguments so the rule can be read for
    another machine: ``rule("lstm", backend="gpu") == ("manual", "fp32")``.
    """
    cell = get_cell(cell)
    backend = jax.default_backend() if backend is None else backend
    bf16 = backend == "cpu" and (cpu_has_bf16() if bf16_dots is None else bf16_dots)
    if impl == RULE:
        impl = default_impl(cell, backend=backend, onednn=onednn, bf16_dots=bf16_dots)
    if impl == "onednn" and cell.name in ONEDNN_ON_CPU:
        # A given --impl onednn takes the measured precision too (its bf16 GRU is the slower one).
        return "onednn", "bf16" if bf16 and ONEDNN_ON_CPU[cell.name] == "bf16" else "fp32"
    offered = IMPLS[impl].precisions if impl in IMPLS else PRECISIONS
    return impl, "bf16" if bf16 and "bf16" in offered else "fp32"


def pick(pairs: list[tuple[str, str]], step_ms: dict) -> tuple[str, str]:
    """The first of ``pairs`` (preference order) whose ``step_ms["impl/precision"]`` is within
    :data:`TIE_TOLERANCE` of the smallest: a faster candidate must win by more than noise."""
    fastest = min(step_ms[f"{i}/{p}"] for i, p in pairs)
    return next((i, p) for i, p in pairs if step_ms[f"{i}/{p}"] <= fastest * (1 + TIE_TOLERANCE))


def choose(cell, T: int, B: int, I: int, H: int, *, impl: str = AUTO, precision: str = AUTO,
           repeats: int = 5) -> dict:
    """Resolve ``impl`` / ``precision`` for one layer of ``cell`` at ``T, B, I, H``; the same in every process.

    Each is a name (used as given), :data:`RULE` (``"default"``: :func:`rule`) or
    ``"auto"`` (timed). Returns ``{"impl", "precision", "chosen_by",
    "candidates", "step_ms"}``: ``chosen_by`` is ``"given"`` (nothing to
    choose), ``"default rule"``, ``"single candidate"``, ``"rule"`` (too small
    to time: the first candidate) or ``"measured"`` (``step_ms`` then maps
    ``"impl/precision"`` to its median step time). In a multi-process job,
    process 0 decides (and times) and the others receive its choice.
    """
    if impl not in (RULE, AUTO) and precision not in (RULE, AUTO):
        return {"impl": impl, "precision": precision, "chosen_by": "given", "candidates": [f"{impl}/{precision}"],
                "step_ms": {}}
    # Process 0 decides for all: even the rule reads this host's CPU flags, and timings differ between processes.
    return multiprocess.decide_on_main(lambda: _resolve(cell, T, B, I, H, impl, precision, repeats), "layer choice")


def _resolve(cell, T, B, I, H, impl, precision, repeats) -> dict:
    """:func:`choose` in one process: the rule where asked, then the candidates timed where ``"auto"``."""
    impl = rule(cell)[0] if impl == RULE else impl
    if precision == RULE:
        precision = rule(cell, RULE if impl == AUTO else impl)[1]
    if AUTO not in (impl, precision):
        return {"impl": impl, "precision": precision, "chosen_by": "default rule",
                "candidates": [f"{impl}/{precision}"], "step_ms": {}}
    pairs = candidates(cell, impl, precision)
    record = {"candidates": [f"{i}/{p}" for i, p in pairs], "step_ms": {}}
    if len(pairs) == 1:
        return {"impl": pairs[0][0], "precision": pairs[0][1], "chosen_by": "single candidate", **record}
    if forward_flops(get_cell(cell).name, T, B, I, H) < MIN_TIMED_FLOPS:
        return {"impl": pairs[0][0], "precision": pairs[0][1], "chosen_by": "rule", **record}
    steps = {}
    for name, policy in pairs:  # compile and warm up every candidate before timing any
        loss, params, xs = layer_problem(cell, layer_impl(name, precision=policy), T, B, I, H)
        step = jax.jit(jax.value_and_grad(loss))
        jax.block_until_ready(step(params, xs))
        steps[f"{name}/{policy}"] = (step, params, xs)
    # Interleaved rounds (one call of each candidate per round), so a burst of load
    # from a neighbour slows every candidate's median alike instead of one candidate's.
    times = {label: [] for label in steps}
    for _ in range(repeats):
        for label, (step, params, xs) in steps.items():
            times[label] += time_calls(lambda: jax.block_until_ready(step(params, xs)), 1)
    record["step_ms"] = {label: round(1e3 * statistics.median(t), 3) for label, t in times.items()}
    best = pick(pairs, record["step_ms"])
    return {"impl": best[0], "precision": best[1], "chosen_by": "measured", **record}


def describe(choice: dict) -> str:
    """One line for the run's log: what was chosen and why."""
    what = f"impl {choice['impl']!r}, precision {choice['precision']!r}"
    if choice["chosen_by"] == "measured":
        timings = ", ".join(f"{k} {v:.1f} ms" for k, v in choice["step_ms"].items())
        return f"{what}: the fastest one-layer training step here ({timings})"
    if choice["chosen_by"] == "rule":
        return f"{what}: problem too small to time (< {MIN_TIMED_FLOPS:.0e} FLOPs), first of {choice['candidates']}"
    if choice["chosen_by"] == "default rule":
        return f"{what}: the default for {jax.default_backend()} (lstm_jax.impls.default_impl; 'auto' times instead)"
    return f"{what} ({choice['chosen_by']})"
