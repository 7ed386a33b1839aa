"""The end of every training run, in one place: reload the best checkpoint, evaluate the final and the best
params on every held-out split, finish the machine record, write ``results.json`` and print the figures.

::

    result = fit(task.loss, params, get_batch, config, out_dir=out, eval_fn=task.eval_fn(splits["val"]), ...)
    results = finish_run(task, result, out, {"val": val_data, "test": test_data}, args=args, machine=machine,
                         train_seconds=seconds, extra={"sample": ...})

``results.json`` holds ``final`` and ``best_by_val`` (each ``{"step", <split>: task.evaluate(...)}``;
``best_by_val`` is ``final`` when the best checkpoint is the last step), ``steps_done``, ``stop_reason``,
``train_seconds_this_invocation``, ``machine``, the ``command`` and ``config`` (the resolved arguments,
``config["config"]`` the ``--config`` file, if any), then the script's ``extra`` keys.
"""

from __future__ import annotations

import json
import numbers
import sys
from pathlib import Path
from typing import Any, Callable

from lstm_jax.distributed import sharding
from lstm_jax.train.checkpoint import load_checkpoint

from .harness import run_matmul_gflops
from .machine import finish_machine_info

__all__ = ["evaluate_final_and_best", "finish_run", "print_figures", "resolved_args"]


def resolved_args(args) -> dict:
    """The run's arguments as JSON can hold them (what the config file and the flags resolved to)."""
    return json.loads(json.dumps({k: v for k, v in vars(args).items() if not k.startswith("_")}, default=str))


def evaluate_final_and_best(task, result, out: Path, splits: dict[str, Any]) -> tuple[dict, dict]:
    """``(final, best)``: ``task.evaluate`` of the final params and of the best checkpoint on every split.

    Without a validation split (no best checkpoint kept) ``best`` is ``final``.
    """
    final = {"step": int(result.step), **{name: task.evaluate(result.params, data) for name, data in splits.items()}}
    if result.best is None:
        return final, final
    best_params, meta = load_checkpoint(out, "best", like=result.params)
    if int(meta["step"]) == int(result.step):
        return final, final
    best = {"step": int(meta["step"]), **{name: task.evaluate(best_params, data) for name, data in splits.items()}}
    return final, best


def print_figures(task, final: dict, best: dict) -> None:
    """One line per evaluated params: the step, then ``task.report`` of each split."""
    for label, r in (("final", final), ("best val", best)):
        if label == "best val" and r is final:
            continue
        splits = ", ".join(f"{name} {task.report(v)}" for name, v in r.items() if name != "step")
        print(f"{label} (step {r['step']}): {splits}")


def _figures(r: dict) -> dict:
    """``final``/``best`` as results.json keeps them: the numbers (arrays such as predictions are left out)."""
    return {name: v if name == "step" else {k: x for k, x in v.items() if isinstance(x, numbers.Number)}
            for name, v in r.items()}


def finish_run(task, result, out: Path, splits: dict[str, Any], *, args, machine: dict, train_seconds: float,
               extra: dict | Callable[[dict, dict], dict] | None = None, write: bool | None = None) -> dict:
    """Evaluate, record and print the end of a run; returns the results dict (written to ``out/results.json``).

    ``extra``: the script's own keys, or ``extra(final, best)`` computing them from the full figures (which
    may hold arrays, e.g. a classifier's predictions; results.json keeps the numbers). ``write``: whether
    this process writes and prints (default: process 0 of a multi-process job).
    """
    full_final, full_best = evaluate_final_and_best(task, result, out, splits)
    final = _figures(full_final)
    best = final if full_best is full_final else _figures(full_best)
    if callable(extra):
        extra = extra(full_final, full_best)
    results = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "config": resolved_args(args),
        "steps_done": int(result.step),
        "stop_reason": result.stop_reason,
        "final": final,
        "best_by_val": best,
        "train_seconds_this_invocation": round(train_seconds, 1),
        "machine": finish_machine_info(machine, matmul_gflops=run_matmul_gflops()),
        **(extra or {}),
    }
    if not (sharding.is_main_process() if write is None else write):
        return results
    written = {k: v for k, v in results.items() if not k.startswith("_")}  # "_" keys: for the script only
    (Path(out) / "results.json").write_text(json.dumps(written, indent=2, default=float))
    print(f"\ntrained to step {result.step} in {train_seconds:.1f} s this invocation ({result.stop_reason})")
    print_figures(task, final, best)
    return results
