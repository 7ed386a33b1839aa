"""Throughput of the LSTM training step vs batch size, sequence length, hidden size and device count.

One sweep per axis around a base size (T=64, B=32, I=32, H=128), all other
sizes held at the base. Throughput is reported as training tokens/s
(``B * T`` per step) and GFLOP/s (``3 x forward``, forward = ``2*T*B*(I+H)*4H``).

The device-count sweep runs each count N in a fresh subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (JAX fixes the device
count at start-up) and uses :mod:`lstm_jax.distributed.sharding` (batch sharded over a 1-D
mesh, params replicated) at a fixed global batch. On a CPU the simulated
devices share the same cores, so this measures the *overhead* of the sharded
program (partitioning, all-reduce), not a speed-up; on a multi-GPU/TPU host the
same code measures real scaling.

The process sweep adds the process dimension: each configuration
``processes x local devices`` (1x1, 1x2, 2x1, 2x2, 4x1) is a real multi-process
JAX job started with ``python -m lstm_jax.distributed.launch`` (processes on localhost,
Gloo collectives between them), global batch fixed. Next to the step time it
reports the *communication share*: the time of an all-reduce of one
gradient-sized buffer over all devices (what the step's gradient averaging
costs) divided by the step time. On one 2-core machine this measures the
overhead of the multi-process program, not a speed-up.

    python -m experiments.benchmarks.scaling --budget-minutes 10
    python -m experiments.benchmarks.scaling --quick
    python -m experiments.benchmarks.scaling --only processes --process-grid 1x1,1x2,2x1,2x2,4x1

Writes ``results/scaling.json``, prints a markdown table and saves log-log
plots ``results/scaling.png`` and ``results/scaling_processes.png``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


from experiments.common import cli
from experiments.common.harness import REPO_ROOT, layer_problem, result_path, run_python, time_calls, train_flops
from experiments.common.machine import finish_machine_info, machine_info
from lstm_jax.layers import count_params

BASE = {"T": 64, "B": 32, "I": 32, "H": 128}
SWEEPS = {
    "B": [8, 16, 32, 64, 128],
    "T": [16, 32, 64, 128, 256],
    "H": [32, 64, 128, 256, 512],
}
DEVICES = [1, 2, 4, 8]
PROCESS_GRID = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1)]  # (processes, local devices per process)


def time_step(T, B, I, H, impl, repeats, devices=1):
    """Median seconds per training step (params grads of mean(ys^2)); data-parallel if devices > 1."""
    import jax

    from lstm_jax.distributed import sharding

    loss, params, xs = layer_problem("lstm", impl, T, B, I, H)
    if devices > 1:
        assert jax.device_count() >= devices, (jax.device_count(), devices)
        mesh = sharding.make_data_mesh(jax.devices()[:devices])
        params = sharding.replicate(params, mesh)
        xs = sharding.shard_batch(xs, mesh)
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
        + "from experiments.benchmarks.scaling import time_step;"
        f"s, c = time_step({T}, {B}, {I}, {H}, {impl!r}, {repeats}, devices={n});"
        "print('RESULT', json.dumps([s, c]))"
    )
    out = run_python(code, env=env, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise RuntimeError(f"device-count run N={n} failed:\n{out.stdout}\n{out.stderr}")


def process_step(T, B, I, H, impl, repeats):
    """One process of the process sweep: ``(step_s, compile_s, allreduce_s)`` of the sharded step.

    Runs under ``lstm_jax.distributed.launch`` (or alone, as 1 process). Every process
    builds the same global problem and keeps its rows; the all-reduce is timed
    on a ``(devices, n_params)`` buffer summed over its sharded axis, i.e. the
    gradient averaging of the step without the compute.
    """
    from lstm_jax.distributed import multiprocess

    multiprocess.initialize_from_env()
    import jax
    import numpy as np

    from lstm_jax.distributed import sharding

    loss, params, xs = layer_problem("lstm", impl, T, B, I, H)
    mesh = sharding.make_data_mesh()
    multiprocess.process_rows(B)  # the global batch must split evenly over all devices
    params, xs = sharding.replicate(params, mesh), sharding.shard_global(np.asarray(xs), mesh)
    grad = jax.jit(jax.grad(loss))
    t0 = time.perf_counter()
    compiled = grad.lower(params, xs).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, xs))
    step_s = statistics.median(time_calls(lambda: jax.block_until_ready(compiled(params, xs)), repeats))
    n = count_params(params)
    d = jax.device_count()
    buf = sharding.shard_global(np.ones((d, n), np.float32), mesh)
    reduce = jax.jit(lambda g: g.sum(0), out_shardings=sharding.replicated_sharding(mesh)).lower(buf).compile()
    jax.block_until_ready(reduce(buf))
    allreduce_s = statistics.median(time_calls(lambda: jax.block_until_ready(reduce(buf)), max(repeats, 10)))
    return step_s, compile_s, allreduce_s


def process_subprocess(processes, local_devices, T, B, I, H, impl, repeats, malloc="tuned", platform="cpu"):
    """``process_step`` as a real job of ``processes`` x ``local_devices``; the numbers of process 0.

    ``platform="cpu"``: each process gets ``local_devices`` CPU devices; ``"gpu"``: its own
    ``local_devices`` GPUs (``CUDA_VISIBLE_DEVICES``, via ``lstm_jax.distributed.launch --gpus-per-process``).
    """
    code = (
        "import json,sys;"
        + ("from lstm_jax.runtime import tune_malloc; tune_malloc();" if malloc == "tuned" else "")
        + "from experiments.benchmarks.scaling import process_step;"
        f"r = process_step({T}, {B}, {I}, {H}, {impl!r}, {repeats});"
        "import jax; jax.process_index() == 0 and print('RESULT', json.dumps(r))"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    per_process = ["--local-devices" if platform == "cpu" else "--gpus-per-process", str(local_devices)]
    cmd = [sys.executable, "-m", "lstm_jax.distributed.launch", "--processes", str(processes), *per_process,
           "--init-timeout", "120", "--", "-c", code]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("[p0] RESULT"):
            return json.loads(line[len("[p0] RESULT"):])
    raise RuntimeError(f"process run {processes}x{local_devices} failed (status {out.returncode}):\n"
                       f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def parse_grid(spec: str) -> tuple[int, int]:
    """``"2x2"`` -> ``(2, 2)``: processes x local devices."""
    try:
        p, k = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected PROCESSESxLOCAL_DEVICES like 2x2, got {spec!r}") from None
    if p < 1 or k < 1:
        raise ValueError(f"counts must be >= 1, got {spec!r}")
    return p, k


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    cli.add_flag(p, "impl", default="manual", help="layer impl to measure (see lstm_jax.impls.IMPLS)")
    cli.add_flag(p, "repeats", default=3)
    p.add_argument("--devices", action=cli.ListAction, item_type=int, default=list(DEVICES),
                   help="device counts of the data-parallel sweep")
    p.add_argument("--process-grid", action=cli.ListAction, item_type=parse_grid,
                   default=list(PROCESS_GRID), help="processes x local devices of the process sweep, e.g. 1x1,2x2")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                   help="process sweep: simulated CPU devices per process, or that many GPUs per process")
    p.add_argument("--only", choices=("sizes", "devices", "processes"), action="append", default=None,
                   help="run only these sweeps (repeatable; default all)")
    cli.add_flag(p, "quick", help="tiny sweep (smoke test)")
    cli.add_flag(p, "budget_minutes")
    cli.add_flag(p, "out", help="JSON path (default results/scaling.json; with --quick runs/scaling_quick.json)")
    cli.add_malloc_flag(p)
    return p


def scaling(args):
    malloc = cli.apply_malloc(args)
    machine = machine_info(malloc=malloc)
    base, sweeps, devices = dict(BASE), {k: list(v) for k, v in SWEEPS.items()}, list(args.devices)
    grid = list(args.process_grid)
    if args.quick:
        base = {"T": 8, "B": 8, "I": 4, "H": 16}
        sweeps = {"B": [4, 8], "T": [4, 8], "H": [8, 16]}
        devices = [1, 2]
        args.repeats = 1
    only = set(args.only or ("sizes", "devices", "processes"))
    sweeps = sweeps if "sizes" in only else {}
    devices = devices if "devices" in only else []
    grid = grid if "processes" in only else []
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
    global_batch = max(base["B"], max(devices or [1])) * 2
    for n in devices:
        if over_budget():
            break
        s, c = device_subprocess(
            n, base["T"], global_batch, base["I"], base["H"], args.impl, args.repeats, args.malloc
        )
        rows.append(record(base["T"], global_batch, base["I"], base["H"], s, c, sweep="devices", devices=n))
        print(f"devices={n}: {1e3 * s:8.1f} ms/step (global batch {global_batch}), "
              f"{rows[-1]['tokens_per_s']:9.0f} tok/s", flush=True)
    process_batch = 8 * max([p * k for p, k in grid] or [1])  # fixed global batch, divisible by every config
    for p, k in grid:
        if over_budget():
            break
        s, c, r = process_subprocess(p, k, base["T"], process_batch, base["I"], base["H"], args.impl,
                                     max(args.repeats, 5), args.malloc, args.platform)
        rows.append(record(base["T"], process_batch, base["I"], base["H"], s, c, sweep="processes", devices=p * k,
                           processes=p, local_devices=k, allreduce_s=r, comm_share=min(r / s, 1.0)))
        print(f"{p} processes x {k} local devices: {1e3 * s:8.1f} ms/step, {rows[-1]['tokens_per_s']:9.0f} tok/s, "
              f"all-reduce {1e3 * r:.2f} ms ({100 * rows[-1]['comm_share']:.0f}% of the step)", flush=True)

    srows, prows = print_tables(rows, base, args, process_batch)
    out = Path(args.out) if args.out else result_path("scaling", quick=args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"impl": args.impl, "args": vars(args), "base": base, "rows": rows, "malloc": args.malloc,
                               "machine": finish_machine_info(machine),
                               "note": "simulated devices share the same CPU cores"}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        if srows:
            plot_sweeps(srows, out.with_suffix(".png"), args.impl)
        if prows:
            plot_processes(prows, out.with_name(out.stem + "_processes.png"), args.impl)
    except Exception as e:
        print(f"plot skipped: {e}")
    print(f"wrote {out}")


def print_tables(rows, base, args, process_batch):
    """Print the size/device sweeps and the process grid as Markdown; return (sweep rows, process rows)."""
    print(f"\nLSTM training step, impl={args.impl!r}, base T={base['T']} B={base['B']} I={base['I']} "
          f"H={base['H']}; malloc {args.malloc}; load average {os.getloadavg()}\n")
    srows = [r for r in rows if r["sweep"] != "processes"]
    if srows:
        print("| sweep | value | devices | T | B | H | ms/step | tokens/s | GFLOP/s | compile s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in srows:
        value = r["devices"] if r["sweep"] == "devices" else r[r["sweep"]]
        print(f"| {r['sweep']} | {value} | {r['devices']} | {r['T']} | {r['B']} | {r['H']} | "
              f"{1e3 * r['step_s']:.1f} | {r['tokens_per_s']:.0f} | {r['gflops']:.1f} | {r['compile_s']:.1f} |")
    prows = [r for r in rows if r["sweep"] == "processes"]
    if prows:
        print(f"\nProcesses x local devices (real processes on localhost, Gloo; global batch {process_batch}; "
              "on a shared CPU this is overhead, not speed-up)\n")
        print("| processes | local devices | devices | ms/step | tokens/s | all-reduce ms | comm share | compile s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in prows:
            print(f"| {r['processes']} | {r['local_devices']} | {r['devices']} | {1e3 * r['step_s']:.1f} | "
                  f"{r['tokens_per_s']:.0f} | {1e3 * r['allreduce_s']:.2f} | {100 * r['comm_share']:.0f}% | "
                  f"{r['compile_s']:.1f} |")
    return srows, prows


def plot_sweeps(rows, path, impl):
    """Log-log tokens/s and GFLOP/s of the size sweeps and the device-count sweep, one panel each."""
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
    fig.suptitle(f"LSTM training-step throughput, impl={impl}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_processes(prows, path, impl):
    """Log-log tokens/s (and all-reduce share) vs total devices, one point per processes x local devices."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in prows:
        ax.loglog(r["devices"], r["tokens_per_s"], "o", ms=8, label=f"{r['processes']}x{r['local_devices']}: "
                  f"{100 * r['comm_share']:.0f}% comm")
    ax.set_xlabel("devices = processes x local devices (CPU, shared cores)")
    ax.set_ylabel("training tokens/s")
    ax.set_title(f"LSTM step across processes, impl={impl}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="processes x local", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    return cli.run(build_parser(), scaling, argv)


if __name__ == "__main__":
    main()
