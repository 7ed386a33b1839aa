"""Repeat one experiment over seeds: per-seed values, mean ± std, in JSON and a markdown table.

Runs ``SCRIPT ARGS --seed S --out OUT/seed_S`` once per seed, one after the
other, each in its own process (fresh JAX, its own malloc setting, nothing
cached between seeds), then reads every run's ``results.json`` and reports the
requested values (paths as in :mod:`experiments.tools.records`)::

    python -m experiments.tools.seeds --seeds 0 1 2 --out runs/char_30min \\
        --metrics final.test.stream_nats_per_char final.test.nats_per_char steps_done \\
        -- -m experiments.char_lm.char_lstm --config configs/shakespeare_30min.toml

    python -m experiments.tools.seeds --seeds 0 1 2 --out runs/adding_seeds \\
        --metrics "runs[cell=lstm,T=400].final_test" "runs[cell=lstm,T=400].solved_at_step" \\
        -- -m experiments.long_range.long_range --task adding --lengths 400 --cells lstm

Writes ``OUT/seeds.json`` (``--name``; the command, per-seed values and run directories,
and per metric ``n, mean, std`` (sample standard deviation, ``ddof=1``),
``min, max``) and ``OUT/seeds.md``. Each run's output goes to the console
prefixed ``[seed S]`` and to ``OUT/seed_S/seeds_stdout.log``. ``--reuse`` keeps
a seed whose ``results.json`` already exists (an interrupted sweep continues);
a run that fails stops the sweep with one line naming the seed and its log.
A metric that is ``null`` in some run (e.g. a task never solved) is reported
per seed and left out of the mean, with the count of such runs.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


from experiments.common import cli
from experiments.common.harness import REPO_ROOT
from experiments.tools.records import RecordError, lookup, read_json



def build_parser():
    p = cli.make_parser(__doc__)
    p.add_argument("--seeds", action=cli.ListAction, item_type=int, default=[0, 1, 2], help="seeds to run")
    p.add_argument("--metrics", action=cli.ListAction, required=True,
                   help="paths of the values to report (experiments/tools/records.py)")
    p.add_argument("--out", required=True, help="sweep directory: OUT/seed_S per run, OUT/seeds.json")
    p.add_argument("--results-file", default="results.json", help="the JSON each run writes in its --out")
    p.add_argument("--reuse", action="store_true", help="keep seeds whose results file already exists")
    p.add_argument("--name", default="seeds",
                   help="write OUT/NAME.json and OUT/NAME.md (another name keeps a second summary, e.g. of "
                        "--results-file eval.json, beside the first)")
    p.add_argument("command", nargs="+", metavar="SCRIPT [ARGS]", help="after --: the experiment and its flags")
    return p


def summarize(values: list) -> dict:
    """``n, mean, std (ddof=1; 0 for one value), min, max`` of the numbers in ``values`` (``None``s counted apart)."""
    numbers = [float(v) for v in values if v is not None]
    out = {"values": values, "n": len(numbers), "missing": len(values) - len(numbers)}
    if numbers:
        out.update(mean=statistics.fmean(numbers), std=statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
                   min=min(numbers), max=max(numbers))
    return out


def format_value(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def markdown(summary: dict) -> str:
    """One row per metric: mean ± std (n), then each seed's value."""
    seeds = summary["seeds"]
    lines = ["| metric | mean ± std (n) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for m in summary["metrics"]:
        stat = f"{format_value(m['mean'])} ± {format_value(m['std'])} ({m['n']})" if m["n"] else "—"
        if m["missing"]:
            stat += f", {m['missing']} without a value"
        lines.append(f"| `{m['path']}` | {stat} | " + " | ".join(format_value(v) for v in m["values"]) + " |")
    return "\n".join(lines)


def run_seed(command: list[str], seed: int, run_dir: Path) -> None:
    """Run ``command --seed seed --out run_dir``, echoing its output prefixed; SystemExit if it fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "seeds_stdout.log"
    argv = [sys.executable, *command, "--seed", str(seed), "--out", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if command[0] == "-m":  # the module is found from any working directory; relative paths stay the caller's
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log, "w") as f, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                               env=env) as proc:
        for line in proc.stdout:
            f.write(line)
            print(f"[seed {seed}] {line}", end="", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: seed {seed}: {' '.join(command[:2] if command[0] == '-m' else command[:1])} exited with status {proc.returncode} "
                         f"(log: {log})")


def seeds(args) -> dict:
    command = list(args.command)
    for flag in ("--seed", "--out"):
        if any(a == flag or a.startswith(flag + "=") for a in command[1:]):
            raise SystemExit(f"error: the command must not set {flag}: seeds.py sets it per run")
    script = Path(command[0])
    if script.suffix == ".py" and not script.exists() and (REPO_ROOT / script).exists():
        command[0] = str(REPO_ROOT / script)
    if command[0] == "-m":  # -- -m experiments.char_lm.char_lstm ...: a module, run from the repository
        if len(command) < 2:
            raise SystemExit("error: -m needs a module name (e.g. -m experiments.char_lm.char_lstm)")
    elif not Path(command[0]).exists():
        raise SystemExit(f"error: no experiment script {command[0]!r}")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"error: --seeds repeats a seed: {args.seeds}")
    out = Path(args.out)
    runs, t0 = [], time.perf_counter()
    for seed in args.seeds:
        run_dir = out / f"seed_{seed}"
        results = run_dir / args.results_file
        if args.reuse and results.exists():
            print(f"[seed {seed}] reusing {results}", flush=True)
        else:
            results.unlink(missing_ok=True)  # a stale file must not pass for this run's
            t_run = time.perf_counter()
            run_seed(command, seed, run_dir)
            print(f"[seed {seed}] done in {time.perf_counter() - t_run:.0f} s", flush=True)
        try:
            record = read_json(results)
            values = {path: lookup(record, path) for path in args.metrics}
        except RecordError as err:
            raise SystemExit(f"error: seed {seed}: {err}") from None
        for path, v in values.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SystemExit(f"error: seed {seed}: {path} is {v!r}, not a number")
            if isinstance(v, float) and not math.isfinite(v):
                print(f"[seed {seed}] warning: {path} = {v}", flush=True)
        runs.append({"seed": seed, "dir": str(run_dir), "values": values})
    summary = {
        "command": command,
        "seeds": list(args.seeds),
        "results_file": args.results_file,
        "runs": runs,
        "metrics": [{"path": path, **summarize([r["values"][path] for r in runs])} for path in args.metrics],
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=1))
    table = markdown(summary)
    (out / f"{args.name}.md").write_text(table + "\n")
    print("\n" + table + f"\n\nwrote {out / (args.name + '.json')} and {out / (args.name + '.md')}")
    return summary


def main(argv=None):
    return cli.run(build_parser(), seeds, argv)  # everything after "--" is the experiment's command


if __name__ == "__main__":
    main()
