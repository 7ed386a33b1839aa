"""The library's default layer path against the impls it stands for: one char-model training step, one process.

What a user gets from ``apply_stack`` / ``char_loss`` with ``impl`` left at its
default (``None``: :func:`lstm_jax.impls.default_impl`) beside ``impl="onednn"``
and ``impl="manual"`` (and any other ``--impls``), at the Tiny Shakespeare
shape by default: a 2-layer LSTM of 512 units on one-hot characters
(vocabulary 65), ``T=100``, ``B=32``, float32. One step is the jitted
``value_and_grad`` of the mean cross-entropy plus an Adam update. All impls are
compiled and warmed up first, then timed in interleaved rounds (one call of
each per round, so load that comes and goes hits them alike); the record holds
each impl's median, min and max in ms and what the default resolved to (read
from the compiled program: whether it calls oneDNN's kernel).

    python -m experiments.benchmarks.default_impl --config configs/default_impl_cpu.toml
    python -m experiments.benchmarks.default_impl --repeats 3 --out /tmp/default_impl.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import optax

from experiments.common import cli, config
from experiments.common.machine import load_average, machine_info
from lstm_jax.impls import IMPLS, default_impl
from lstm_jax.impls.onednn import unavailable_reason
from lstm_jax.models.char_model import char_loss, init_char_model
from lstm_jax.models.spec import RecurrentSpec

#: ``--impls`` name for ``impl=None``.
DEFAULT = "default"
#: The custom-call target of oneDNN's forward kernel (lstm_jax.impls._onednn.build.FORWARD_TARGET).
ONEDNN_CALL = "lstm_jax_onednn_rnn_forward"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_config_flag(p, __file__)
    cli.add_model_flags(p, ("cell", "layers", "hidden"), cell="lstm", layers=2, hidden=512)
    p.add_argument("--vocab", type=int, default=65, help="one-hot input size (Tiny Shakespeare: 65)")
    p.add_argument("--seq-len", type=int, default=100, help="time steps per window")
    cli.add_flag(p, "batch_size", default=32)
    cli.add_flag(p, "impls", default=[DEFAULT, "onednn", "manual"],
                 help=f"'{DEFAULT}' (impl=None) and names in lstm_jax.impls.IMPLS")
    cli.add_flag(p, "repeats", default=10, help="timed rounds (one call of each impl per round)")
    cli.add_flag(p, "out", default="results/default_impl.json")
    return p


def make_step(spec: RecurrentSpec):
    """The jitted training step ``(params, opt_state, inputs, targets) -> (params, opt_state, loss)`` of ``spec``."""
    opt = optax.adam(1e-3)

    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(lambda p: char_loss(p, inputs, targets, spec)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step), opt


def run(args) -> dict:
    for name in args.impls:
        if name != DEFAULT and name not in IMPLS:
            raise SystemExit(f"default_impl: unknown impl {name!r}; choose '{DEFAULT}' or one of {sorted(IMPLS)}")
    key = jax.random.PRNGKey(0)
    spec = RecurrentSpec(cell=args.cell, hidden=args.hidden, layers=args.layers)  # impl None: the default rule
    params = init_char_model(key, args.vocab, spec)
    ids = jax.random.randint(jax.random.PRNGKey(1), (args.batch_size, args.seq_len + 1), 0, args.vocab)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    steps, compile_s = {}, {}
    for name in args.impls:
        step, opt = make_step(spec.replace(impl=None if name == DEFAULT else name))
        state = (params, opt.init(params))
        t0 = time.perf_counter()
        lowered = step.lower(*state, inputs, targets)
        calls_onednn = ONEDNN_CALL in lowered.as_text()
        compiled = lowered.compile()
        for _ in range(2):  # warm-up: the first calls build oneDNN's primitives and touch the buffers
            jax.block_until_ready(compiled(*state, inputs, targets))
        compile_s[name] = time.perf_counter() - t0
        steps[name] = (compiled, state, calls_onednn)
    times = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved rounds
        for name, (compiled, state, _) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*state, inputs, targets))
            times[name].append(1e3 * (time.perf_counter() - t0))
    rows = [{"impl": name, "median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "times_ms": t,
             "compile_and_warmup_s": compile_s[name], "calls_onednn": steps[name][2]} for name, t in times.items()]
    return {
        "default_impl": default_impl(args.cell), "onednn_unavailable": unavailable_reason(), "rows": rows,
        "ratios_to_default": {r["impl"]: r["median_ms"] / rows[0]["median_ms"] for r in rows},
    }


def main(argv=None) -> None:
    args = config.parse_args(build_parser(), argv)
    environment = machine_info()  # before the run: the load it started under
    result = run(args)
    environment["load_average_at_end"] = load_average()
    record = {"command": [sys.argv[0], *(sys.argv[1:] if argv is None else argv)], "config": vars(args),
              "environment": environment, **result}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"default impl here: {result['default_impl']!r} (oneDNN: {result['onednn_unavailable'] or 'available'})")
    for r in result["rows"]:
        print(f"{r['impl']:>10}: median {r['median_ms']:7.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f}; "
              f"oneDNN kernel: {'yes' if r['calls_onednn'] else 'no'})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
