"""``--impl auto`` / ``--precision auto``: the fastest layer configuration, measured on the machine that runs.

The fastest layer implementation and precision policy depend on the machine
(bf16 pays only where the CPU has AMX-BF16 or on a GPU; ``"parallel"`` runs only
cells linear in the state) and on the problem size, so the training scripts
measure instead of guessing: :func:`choose` times one training step
(``value_and_grad`` of one layer at the run's ``T, B, I, H``, the problem of
:func:`experiments.common.harness.layer_problem`) for every candidate
``(impl, precision)`` that runs the cell here: all are compiled and warmed up
first, then timed in interleaved rounds (one call of each per round, so load
that comes and goes hits them alike), and the smallest median wins. Candidates,
in order of preference (the first one wins ties within :data:`TIE_TOLERANCE`
and problems too small to time):

* a cell linear in its state (``min_gru``, ``min_lstm``): ``parallel``, ``manual``;
* any other cell: ``cudnn`` (on a GPU, LSTM only), ``manual`` (the fast path on CPU), ``scan`` (the reference);
* each with every policy of :data:`lstm_jax.precision.PRECISIONS` (``fp32``, ``bf16``) that the impl offers.

A problem with less than :data:`MIN_TIMED_FLOPS` matmul FLOPs per forward pass
is not timed (compilation would cost more than the choice could save, and
its step time is mostly overhead): it gets the first candidate. What was
chosen, how, and every timing land in the run's ``results.json`` (``"layer"``).
An explicit ``--impl`` / ``--precision`` is used as given (only the other one
is chosen).
"""

from __future__ import annotations

import statistics

import jax

from lstm_jax.cells import get_cell
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.precision import PRECISIONS

from .harness import forward_flops, layer_problem, time_calls

AUTO = "auto"

#: Forward-pass matmul FLOPs below which the first candidate is taken without timing.
MIN_TIMED_FLOPS = 5e7

#: Relative step-time difference below which the earlier (preferred) candidate wins: on a
#: shared 2-core machine medians of a few calls differ by a few % between identical runs.
TIE_TOLERANCE = 0.03

#: Preference order of the layer implementations, by whether the cell is linear in its state.
PREFERENCE = {True: ("parallel", "manual"), False: ("cudnn", "manual", "scan")}


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


def pick(pairs: list[tuple[str, str]], step_ms: dict) -> tuple[str, str]:
    """The first of ``pairs`` (preference order) whose ``step_ms["impl/precision"]`` is within
    :data:`TIE_TOLERANCE` of the smallest: a faster candidate must win by more than noise."""
    fastest = min(step_ms[f"{i}/{p}"] for i, p in pairs)
    return next((i, p) for i, p in pairs if step_ms[f"{i}/{p}"] <= fastest * (1 + TIE_TOLERANCE))


def choose(cell, T: int, B: int, I: int, H: int, *, impl: str = AUTO, precision: str = AUTO,
           repeats: int = 5) -> dict:
    """Resolve ``impl`` / ``precision`` (either may be ``"auto"``) for one layer of ``cell`` at ``T, B, I, H``.

    Returns ``{"impl", "precision", "chosen_by", "candidates", "step_ms"}``:
    ``chosen_by`` is ``"given"`` (nothing was auto), ``"single candidate"``,
    ``"rule"`` (too small to time: the first candidate) or ``"measured"``
    (``step_ms`` then maps ``"impl/precision"`` to its median step time).
    """
    pairs = candidates(cell, impl, precision)
    record = {"candidates": [f"{i}/{p}" for i, p in pairs], "step_ms": {}}
    if impl != AUTO and precision != AUTO:
        return {"impl": impl, "precision": precision, "chosen_by": "given", **record}
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
    return f"{what} ({choice['chosen_by']})"
