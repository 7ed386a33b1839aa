"""Before/after tables from ``benchmark.py`` JSON files: each impl's median step time in two groups of runs.

For a change measured side by side (runs of ``experiments/benchmarks/benchmark.py``
before and after it, alternated), prints the conditions of each run (load average,
``jnp.dot`` rate at its start) and, per size and impl, the medians of every run,
after ÷ before, and each side's median ratio to a reference impl measured in the
same runs (default: Flax), which cancels much of the machine's drift between runs::

    python -m experiments.benchmarks.compare_benchmarks --before results/refactor_benchmark/before_?.json \\
        --after results/refactor_benchmark/after_?.json
"""

from __future__ import annotations

import json
import statistics


from experiments.common import cli


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True)
    p.add_argument("--before", nargs="+", required=True, help="benchmark JSON files of the runs before the change")
    p.add_argument("--after", nargs="+", required=True, help="benchmark JSON files of the runs after it")
    p.add_argument("--reference", default="flax", help="impl name prefix of the reference row (default: flax)")
    return p


def medians(paths, side, data, conditions):
    """Collect ``data[size][impl][side] = [median_ms per run]`` and one line of conditions per run."""
    for path in paths:
        run = json.loads(open(path).read())
        load = ", ".join(f"{x:.2f}" for x in run["environment"]["load_average_at_start"])
        conditions.append(f"| {side} {path} | {load} | {run['matmul_gflops_median_start']:.0f} |")
        for entry in run["results"]:
            size = ",".join(str(v) for v in entry["size"].values())
            for row in entry["rows"]:
                data.setdefault(size, {}).setdefault(row["impl"], {}).setdefault(side, []).append(row["median_ms"])


def compare(args):
    data, conditions = {}, []
    medians(args.before, "before", data, conditions)
    medians(args.after, "after", data, conditions)
    print("| run | load avg at start | jnp.dot 2048² GFLOP/s (start) |\n|---|---|---|\n" + "\n".join(conditions))
    print(f"\n| T,B,I,H | impl | before ms | after ms | after/before | before ÷ {args.reference} | after ÷ {args.reference} |")
    print("|---|---|---|---|---|---|---|")
    for size, impls in data.items():
        refs = [k for k in impls if k.startswith(args.reference)]
        for impl, sides in impls.items():
            if impl in refs or "before" not in sides or "after" not in sides:
                continue
            b, a = sides["before"], sides["after"]
            ratio = lambda side: (statistics.median(x / y for x, y in zip(sides[side], impls[refs[0]][side]))
                                  if refs and side in impls[refs[0]] else float("nan"))
            print(f"| {size} | {impl} | {', '.join(f'{x:.1f}' for x in b)} | {', '.join(f'{x:.1f}' for x in a)} | "
                  f"{statistics.median(a) / statistics.median(b):.2f} | {ratio('before'):.2f} | {ratio('after'):.2f} |")


def main(argv=None):
    return cli.run(build_parser(), compare, argv)


if __name__ == "__main__":
    main()
