"""One benchmark record from runs made in separate processes, with the ratios recomputed across them.

``benchmark.py --processes per-impl`` runs each implementation alone and merges in one go; this
tool merges records made apart (by hand, one ``--impls`` at a time, or on another day)::

    python -m experiments.benchmarks.merge_benchmarks results/x/manual.json results/x/onednn.json \\
        results/x/torch.json --out results/x/merged.json

Rows of the same cell and size are put together; ``speed_vs_torch``, ``speed_vs_flax`` and
``speed_vs_own_fp32`` are recomputed by ``benchmark.merge_records`` (the benchmark's own code).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from experiments.benchmarks.benchmark import merge_records


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
    out = merge_records(records, args.inputs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}: {len(out['results'])} sizes from {len(records)} runs")
    return out


if __name__ == "__main__":
    main()
