"""Throughput of the LSTM training step vs batch size, sequence length, hidden size and device count.

One sweep per axis around a base size (T=64, B=32, I=32, H=128), all other
sizes held at the base. Throughput is reported as training tokens/s
(``B * T`` per step) and GFLOP/s (``3 x forward``, forward = ``2*T*B*(I+H)*4H``).

The device-count sweep runs each count N in a fresh subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (JAX fixes the device
count at start-up) and uses :mod:`lstm_jax.parallel` (batch sharded over a 1-D
mesh, params replicated) at a fixed global batch. On a CPU the simulated
devices share the same cores, so this measures the *overhead* of the sharded
program (partitioning, all-reduce), not a speed-up; on a multi-GPU/TPU host the
same code measures real scaling.

    python experiments/scaling.py --budget-minutes 10
    python experiments/scaling.py --quick

Writes ``results/scaling.json``, prints a markdown table and saves a log-log
plot ``results/scaling.png``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    import _bootstrap  # noqa: F401

from experiments.common import cli
from experiments.common.harness import REPO_ROOT, layer_problem, run_python, time_calls, train_flops
from experiments.common.machine import finish_machine_info, machine_info

BASE = {"T": 64, "B": 32, "I": 32, "H": 128}
SWEEPS = {
    "B": [8, 16, 32, 64, 128],
    "T": [16, 32, 64, 128, 256],
    "H": [32, 64, 128, 256, 512],
}
DEVICES = [1, 2, 4, 8]


def time_step(T, B, I, H, impl, repeats, devices=1):
    """Median seconds per training step (params grads of mean(ys^2)); data-parallel if devices > 1."""
    import jax

    from lstm_jax import parallel

    loss, params, xs = layer_problem("lstm", impl, T, B, I, H)
    if devices > 1:
        assert jax.device_count() >= devices, (jax.device_count(), devices)
        mesh = parallel.make_data_mesh(jax.devices()[:devices])
        params = parallel.replicate(params, mesh)
        xs = parallel.shard_batch(xs, mesh)
    grad = jax.jit(jax.grad(loss))
    t0 = time.perf_counter()
    compiled = grad.lower(params, xs).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, xs))
    times = time_calls(lambda: jax.block_until_ready(compiled(params, xs)), repeats)
    return statistics.median(times), compile_s


def record(T, B, I, H, step_s, compile_s, **extra):
    flops = train_flops("lstm", T, B, I, H)
    return dict(T=T, B=B, I=I, H=H, step_s=step_s, compile_s=compile_s,
                tokens_per_s=B * T / step_s, gflops=flops / step_s / 1e9, **extra)


def device_subprocess(n, T, B, I, H, impl, repeats, malloc="tuned"):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    code = (
        "import json;"
        + ("from lstm_jax.runtime import tune_malloc; tune_malloc();" if malloc == "tuned" else "")
        + "from experiments.scaling import time_step;"
        f"s, c = time_step({T}, {B}, {I}, {H}, {impl!r}, {repeats}, devices={n});"
        "print('RESULT', json.dumps([s, c]))"
    )
    out = run_python(code, env=env, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise RuntimeError(f"device-count run N={n} failed:\n{out.stdout}\n{out.stderr}")


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True)
    cli.add_flag(p, "impl", default="manual", help="layer impl to measure (see lstm_jax.impls.IMPLS)")
    cli.add_flag(p, "repeats", default=3)
    p.add_argument("--devices", action=cli.ListAction, item_type=int, default=list(DEVICES),
                   help="device counts of the data-parallel sweep")
    cli.add_flag(p, "quick", help="tiny sweep (smoke test)")
    cli.add_flag(p, "budget_minutes")
    cli.add_flag(p, "out", default=str(REPO_ROOT / "results" / "scaling.json"), help="JSON path")
    cli.add_malloc_flag(p)
    return p


def scaling(args):
    malloc = cli.apply_malloc(args)
    machine = machine_info(malloc=malloc)
    base, sweeps, devices = dict(BASE), {k: list(v) for k, v in SWEEPS.items()}, list(args.devices)
    if args.quick:
        base = {"T": 8, "B": 8, "I": 4, "H": 16}
        sweeps = {"B": [4, 8], "T": [4, 8], "H": [8, 16]}
        devices = [1, 2]
        args.repeats = 1
    start = time.perf_counter()

    def over_budget():
        return args.budget_minutes is not None and time.perf_counter() - start > 60 * args.budget_minutes

    rows = []
    for axis, values in sweeps.items():
        for v in values:
            if over_budget():
                break
            size = dict(base, **{axis: v})
            s, c = time_step(size["T"], size["B"], size["I"], size["H"], args.impl, args.repeats)
            rows.append(record(size["T"], size["B"], size["I"], size["H"], s, c, sweep=axis, devices=1))
            print(f"{axis}={v:4d}: {1e3 * s:8.1f} ms/step, {rows[-1]['tokens_per_s']:9.0f} tok/s, "
                  f"{rows[-1]['gflops']:6.1f} GFLOP/s, compile {c:.1f}s", flush=True)
    global_batch = max(base["B"], max(devices)) * 2
    for n in devices:
        if over_budget():
            break
        s, c = device_subprocess(
            n, base["T"], global_batch, base["I"], base["H"], args.impl, args.repeats, args.malloc
        )
        rows.append(record(base["T"], global_batch, base["I"], base["H"], s, c, sweep="devices", devices=n))
        print(f"devices={n}: {1e3 * s:8.1f} ms/step (global batch {global_batch}), "
              f"{rows[-1]['tokens_per_s']:9.0f} tok/s", flush=True)

    print(f"\nLSTM training step, impl={args.impl!r}, base T={base['T']} B={base['B']} I={base['I']} "
          f"H={base['H']}; malloc {args.malloc}; load average {os.getloadavg()}\n")
    print("| sweep | value | devices | T | B | H | ms/step | tokens/s | GFLOP/s | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        value = r["devices"] if r["sweep"] == "devices" else r[r["sweep"]]
        print(f"| {r['sweep']} | {value} | {r['devices']} | {r['T']} | {r['B']} | {r['H']} | "
              f"{1e3 * r['step_s']:.1f} | {r['tokens_per_s']:.0f} | {r['gflops']:.1f} | {r['compile_s']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"impl": args.impl, "base": base, "rows": rows, "malloc": args.malloc,
                               "machine": finish_machine_info(machine),
                               "note": "simulated devices share the same CPU cores"}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(17, 4))
        for ax, axis in zip(axes, ["B", "T", "H", "devices"]):
            rs = [r for r in rows if r["sweep"] == axis]
            if not rs:
                continue
            xs_ = [r["devices"] if axis == "devices" else r[axis] for r in rs]
            ax.loglog(xs_, [r["tokens_per_s"] for r in rs], "o-", label="tokens/s")
            ax.loglog(xs_, [r["gflops"] for r in rs], "s--", label="GFLOP/s")
            ax.set_xlabel({"B": "batch size", "T": "sequence length", "H": "hidden size",
                           "devices": "devices (simulated on CPU)"}[axis])
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle(f"LSTM training-step throughput, impl={args.impl}")
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=110)
    except Exception as e:
        print(f"plot skipped: {e}")
    print(f"wrote {out}")


def main(argv=None):
    return cli.run(build_parser(), scaling, argv)


if __name__ == "__main__":
    main()
