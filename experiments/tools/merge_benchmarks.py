"""One benchmark record from runs made in separate processes, with the ratios recomputed across them.

``benchmark.py`` times every implementation in one process, in interleaved rounds. Where
implementations disturb each other inside one process (torch's OpenMP threads and XLA's
share the cores: ``torch.nn.LSTM`` ran 1.4-4x slower inside a JAX process than alone,
docs/onednn.md#speed), run each alone (``--impls`` one at a time, back to back) and merge::

    python -m experiments.tools.merge_benchmarks results/x/manual.json results/x/onednn.json \\
        results/x/torch.json --out results/x/merged.json

Rows of the same cell and size are put together; ``speed_vs_torch``, ``speed_vs_flax`` and
``speed_vs_own_fp32`` are recomputed by ``benchmark.add_ratios`` (the benchmark's own code),
and the share of matmul peak against the largest peak any of the runs used. Each input's environment is kept under
``"runs"``, so the load and OpenMP settings of every process stay on record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    import _bootstrap  # noqa: F401

from experiments.benchmarks.benchmark import add_ratios


def merge(records: list[dict], names: list[str]) -> dict:
    """The merged record of ``records`` (benchmark.py JSON dicts); ``names`` label them under ``"runs"``."""
    entries: dict[tuple, dict] = {}
    for record in records:
        for entry in record["results"]:
            key = (entry["cell"], tuple(sorted(entry["size"].items())))
            merged = entries.setdefault(key, {"cell": entry["cell"], "size": entry["size"], "rows": []})
            seen = {r["impl"] for r in merged["rows"]}
            twice = seen & {r["impl"] for r in entry["rows"]}
            if twice:
                raise ValueError(f"{sorted(twice)} timed twice for {entry['cell']} {entry['size']}: merge separate impls")
            merged["rows"] += [dict(r) for r in entry["rows"]]
    peak = max(r["matmul_gflops_peak_used"] for r in records)  # each run's own choice (max of start and end)
    results = list(entries.values())
    add_ratios(results, peak)
    runs = [{"file": n, "environment": r.get("environment", {}), "wall_seconds": r.get("wall_seconds")}
            for n, r in zip(names, records)]
    return {"merged_from": names, "matmul_gflops_peak_used": peak, "results": results, "runs": runs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="benchmark.py JSON files, one per process")
    p.add_argument("--out", required=True, help="merged JSON path")
    args = p.parse_args(argv)
    records = []
    for name in args.inputs:
        try:
            records.append(json.loads(Path(name).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"merge_benchmarks: cannot read {name}: {err}") from None
    out = merge(records, args.inputs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}: {len(out['results'])} sizes from {len(records)} runs")
    return out


if __name__ == "__main__":
    main()
