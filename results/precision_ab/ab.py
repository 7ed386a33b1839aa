"""A/B: manual impl fp32 vs bf16 train step, in the tree given by argv[1]. Prints JSON of medians (ms)."""
import sys, json, time, os
sys.path.insert(0, sys.argv[1])
from lstm_jax.runtime import tune_malloc; tune_malloc()
import jax, jax.numpy as jnp, numpy as np
from lstm_jax.layers import apply_stack, init_stack
T,B,I,H = [int(v) for v in sys.argv[2].split(",")]
params = init_stack(jax.random.PRNGKey(0), "lstm", I, H)
xs = jax.random.normal(jax.random.PRNGKey(1), (B,T,I))
fns = {}
for name, cd in (("fp32", None), ("bf16", jnp.bfloat16)):
    f = jax.jit(jax.grad(lambda p, x, cd=cd: jnp.mean(apply_stack("lstm", p, x, impl="manual", compute_dtype=cd)[0]**2)))
    jax.block_until_ready(f(params, xs)); jax.block_until_ready(f(params, xs)); fns[name] = f
ts = {k: [] for k in fns}
for r in range(7):
    for k, f in fns.items():
        t = time.perf_counter(); jax.block_until_ready(f(params, xs)); ts[k].append(time.perf_counter() - t)
a = jnp.ones((2048, 2048)); mm = jax.jit(lambda a: a @ a); jax.block_until_ready(mm(a)); mt = []
for _ in range(5):
    t = time.perf_counter(); jax.block_until_ready(mm(a)); mt.append(time.perf_counter() - t)
print(json.dumps({"tree": sys.argv[1], "size": sys.argv[2], **{k: 1e3 * float(np.median(v)) for k, v in ts.items()},
                  "matmul_gflops": 2 * 2048**3 / float(np.median(mt)) / 1e9, "load": os.getloadavg()}))
