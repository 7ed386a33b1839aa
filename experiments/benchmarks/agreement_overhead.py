"""What agreeing on early stops costs per training step in a multi-process job (lstm_jax.distributed.stopping).

    python -m experiments.benchmarks.agreement_overhead --out results/agreement_overhead.json

Starts itself as a 2-process job (``lstm_jax.distributed.launch``, one CPU device each) and,
in each process, times a small data-parallel training step (a 2-layer GRU,
H=48, T=32, global batch 8: the issue's configuration, whose step is a few
ms) four ways, interleaved in rounds so load from elsewhere hits all alike:

* ``plain``: the step alone;
* ``sigterm``: plus :func:`lstm_jax.distributed.stopping.preemption_requested` (JAX's sync point) every step;
* ``budget``: plus a :class:`lstm_jax.distributed.stopping.TimeBudget` whose deadline falls
  inside the round (its agreed checks: process 0's broadcast at check steps);
* ``every_step``: plus :func:`lstm_jax.distributed.multiprocess.any_process` every step
  (the naive agreement, for comparison).

Process 0 prints the median ms per step of each, the overhead against
``plain``, the number of budget checks per round, the median cost of one call
of each mechanism alone, and how many checks a steady run makes in a 3 and a
30 minute budget at 5 and 100 ms per step; and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from lstm_jax.distributed import launch, multiprocess


def measure(steps: int, rounds: int) -> dict:
    import jax
    import numpy as np

    from lstm_jax.distributed import sharding, stopping
    from lstm_jax.models import char_model as cm
    from lstm_jax.models.spec import RecurrentSpec
    from lstm_jax.train import TrainConfig, make_optimizer, make_train_step

    spec = RecurrentSpec(cell="gru", hidden=48, layers=2, impl="manual")
    params = cm.init_char_model(jax.random.PRNGKey(0), 40, spec)

    def loss_fn(p, batch, key, state):
        x, y = batch
        loss, _ = cm.char_loss(p, x, y, spec)
        return loss, (state, {})

    config = TrainConfig(steps=10**6, progress=False)
    opt_state = make_optimizer(config).init(params)
    params, opt_state, _, put = sharding.replicate_train_state(params, opt_state, None)
    step_fn = make_train_step(loss_fn, config)
    rows = multiprocess.process_rows(8)
    rng = np.random.default_rng(0)
    batch = put((rng.integers(0, 40, (8, 32))[rows].astype(np.int32), rng.integers(0, 40, (8, 32))[rows].astype(np.int32)))

    def run(kind: str, start: int, budget=None) -> float:
        nonlocal params, opt_state
        t0 = time.perf_counter()
        for s in range(start, start + steps):
            params, opt_state, _, stats = step_fn(params, opt_state, None, batch, s)
            jax.device_get(stats)
            if kind == "sigterm":
                stopping.preemption_requested(s + 1)
            elif kind == "budget":
                budget.expired(s + 1)
            elif kind == "every_step":
                multiprocess.any_process(False)
        return 1e3 * (time.perf_counter() - t0) / steps

    kinds = ["plain", "sigterm", "budget", "every_step"]
    times, checks, counter = {k: [] for k in kinds}, [], 1
    run("plain", 0)  # compile
    for _ in range(rounds):
        for kind in kinds:
            budget = None
            if kind == "budget":  # a deadline at the round's expected end: the checks a real run makes
                minutes = steps * statistics.median(times["plain"]) / 60e3
                budget = stopping.TimeBudget(minutes, start_step=counter)
            times[kind].append(run(kind, counter, budget))
            checks += [budget.checks] if budget else []
            counter += steps
    med = {k: statistics.median(v) for k, v in times.items()}
    calls = per_call_ms(counter)
    return {"ms_per_step": {k: round(v, 4) for k, v in med.items()},
            "overhead_ms_per_step": {k: round(med[k] - med["plain"], 4) for k in kinds[1:]},
            "overhead_pct": {k: round(100 * (med[k] / med["plain"] - 1), 2) for k in kinds[1:]},
            "budget_checks_per_round": checks, "steps_per_round": steps, "rounds": rounds,
            "ms_per_call": calls,
            "budget_checks_in_a_run": {f"{m} min at {ms} ms/step": schedule_checks(60 * m, ms / 1e3)
                                       for m in (3, 30) for ms in (5, 100)}}


def per_call_ms(start: int, calls: int = 300) -> dict:
    """Median ms of one call of each agreement mechanism alone (interleaved, so load hits all alike)."""
    import numpy as np

    from lstm_jax.distributed import stopping

    ts = {"preemption_sync_point": [], "broadcast_from_main": [], "any_process": []}
    for i in range(calls):
        for name, fn in (("preemption_sync_point", lambda: stopping.preemption_requested(start + i)),
                         ("broadcast_from_main", lambda: multiprocess.from_main(np.zeros(2, np.int64))),
                         ("any_process", lambda: multiprocess.any_process(False))):
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    return {k: round(1e3 * statistics.median(v), 4) for k, v in ts.items()}


def schedule_checks(budget_s: float, step_s: float) -> int:
    """How many agreed checks a run of steady ``step_s`` steps makes until its ``budget_s`` runs out."""
    from lstm_jax.distributed.stopping import TimeBudget

    now = [0.0]
    budget = TimeBudget(budget_s / 60, clock=lambda: now[0])
    step, checks, next_check = 0, 0, 1
    while True:
        step += 1
        now[0] += step_s
        if step < next_check:
            continue
        checks += 1
        stop, next_check = budget._verdict(step)
        if stop:
            return checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON file (process 0 writes it)")
    args = p.parse_args(argv)
    if multiprocess.ENV_NUM_PROCESSES not in os.environ:  # the parent: start the job
        return launch.launch(["-m", "experiments.benchmarks.agreement_overhead", *(argv if argv is not None else sys.argv[1:])], 2,
                             local_devices=1)
    from lstm_jax.runtime import tune_malloc

    tune_malloc()  # before JAX starts its backend (see lstm_jax.runtime)
    multiprocess.initialize_from_env()
    import jax

    from experiments.common.machine import machine_info

    result = measure(args.steps, args.rounds)
    if jax.process_index() == 0:
        result = {"processes": jax.process_count(), "devices": jax.device_count(), **result,
                  "machine": machine_info(), "command": " ".join(sys.argv)}
        print(json.dumps({k: result[k] for k in ("ms_per_step", "overhead_ms_per_step", "overhead_pct",
                                                   "budget_checks_per_round")}, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
