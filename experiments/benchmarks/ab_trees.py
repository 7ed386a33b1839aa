"""A/B of two source trees: the layer's training step timed in each tree's own code, trees alternated.

For a change to the library measured against the tree before it (a git worktree of
the earlier commit): each round runs one short process per tree, with that tree
first on ``PYTHONPATH``, which times ``jax.grad`` of a mean-squared loss of
``apply_stack(..., impl=IMPL)`` in fp32 and with bf16 matmuls (``compute_dtype``;
the API both trees share), plus the ``jnp.dot`` 2048² rate and the load average, so
each pair of numbers comes from the same minutes of the machine::

    git worktree add /tmp/before <commit>
    python -m experiments.benchmarks.ab_trees --trees /tmp/before . --sizes 128,64,128,512 --rounds 2 \\
        --out runs/ab.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


from experiments.common import cli

#: The child's program: only names both trees have (init_stack, apply_stack's compute_dtype, tune_malloc).
CHILD = r"""
import json, os, sys, time
from lstm_jax.runtime import tune_malloc; tune_malloc()
import jax, jax.numpy as jnp, numpy as np
from lstm_jax.layers import apply_stack, init_stack
(T, B, I, H), impl, repeats = [int(v) for v in sys.argv[1].split(",")], sys.argv[2], int(sys.argv[3])
params, xs = init_stack(jax.random.PRNGKey(0), "lstm", I, H), jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
import lstm_jax
out = {"load": os.getloadavg(), "library": os.path.dirname(lstm_jax.__file__)}
for name, cd in (("fp32_ms", None), ("bf16_ms", jnp.bfloat16)):
    f = jax.jit(jax.grad(lambda p, x: jnp.mean(apply_stack("lstm", p, x, impl=impl, compute_dtype=cd)[0] ** 2)))
    jax.block_until_ready(f(params, xs)); times = []
    for _ in range(repeats):
        t = time.perf_counter(); jax.block_until_ready(f(params, xs)); times.append(time.perf_counter() - t)
    out[name] = 1e3 * float(np.median(times))
a = jnp.ones((2048, 2048)); mm = jax.jit(lambda a: a @ a); jax.block_until_ready(mm(a)); mt = []
for _ in range(5):
    t = time.perf_counter(); jax.block_until_ready(mm(a)); mt.append(time.perf_counter() - t)
out["matmul_gflops"] = 2 * 2048 ** 3 / float(np.median(mt)) / 1e9
print(json.dumps(out))
"""


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    p.add_argument("--trees", nargs="+", required=True, help="source trees (folders holding lstm_jax/), two or more")
    p.add_argument("--sizes", default="128,64,128,512", help="T,B,I,H")
    p.add_argument("--impl", default="manual")
    p.add_argument("--rounds", type=int, default=2, help="each round runs every tree once, in turn")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per process (the median is kept)")
    p.add_argument("--out", default="runs/ab_trees.json")
    return p


def run_tree(tree: str, args) -> dict:
    """One timing process with ``tree`` first on the path; refused unless it really imports that tree's library."""
    root = Path(tree).resolve()
    if not (root / "lstm_jax" / "__init__.py").is_file():
        raise SystemExit(f"error: tree {tree} has no lstm_jax/ package (an installed one would be timed instead)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", CHILD, args.sizes, args.impl, str(args.repeats)], env=env,
                          capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"error: tree {tree}: the timing process failed: {done.stderr.strip().splitlines()[-1:]}")
    run = {"tree": tree, **json.loads(done.stdout.strip().splitlines()[-1])}
    if Path(run["library"]).resolve() != root / "lstm_jax":
        raise SystemExit(f"error: tree {tree}: the process imported lstm_jax from {run['library']}, not from the tree")
    return run


def ab(args):
    if len(args.trees) < 2:
        raise SystemExit("error: --trees needs two or more source trees")
    runs = [run_tree(tree, args) for _ in range(args.rounds) for tree in args.trees]
    print(f"| tree | fp32 ms | bf16 ms | jnp.dot GFLOP/s |  (T,B,I,H = {args.sizes}, impl {args.impl}, "
          f"medians over {args.rounds} rounds)\n|---|---:|---:|---:|")
    for tree in args.trees:
        mine = [r for r in runs if r["tree"] == tree]
        med = {k: statistics.median(r[k] for r in mine) for k in ("fp32_ms", "bf16_ms", "matmul_gflops")}
        print(f"| {tree} | {med['fp32_ms']:.1f} | {med['bf16_ms']:.1f} | {med['matmul_gflops']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(f"wrote {out}")


def main(argv=None):
    return cli.run(build_parser(), ab, argv)


if __name__ == "__main__":
    main()
