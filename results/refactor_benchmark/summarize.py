import json, glob, statistics as st, sys
pattern = sys.argv[1] if len(sys.argv) > 1 else 'results/refactor_benchmark/*_?.json'
data = {}
print("| run | load avg at start | jnp.dot 2048² GFLOP/s (start) |\n|---|---|---|")
for f in sorted(glob.glob(pattern)):
    name = f.split('/')[-1][:-5]; side = name.split('_')[0]
    d = json.load(open(f))
    la = ", ".join(f"{x:.2f}" for x in d['environment']['load_average_at_start'])
    print(f"| {name} | {la} | {d['matmul_gflops_median_start']:.0f} |")
    for entry in d['results']:
        size = ",".join(str(v) for v in entry['size'].values())
        for row in entry['rows']:
            data.setdefault(size, {}).setdefault(row['impl'], {}).setdefault(side, []).append(row['median_ms'])
print()
print("| T,B,I,H | impl | before ms | after ms | after/before | before ÷ Flax | after ÷ Flax |")
print("|---|---|---|---|---|---|---|")
for size, impls in data.items():
    flax = [k for k in impls if k.startswith('flax')][0]
    for impl in impls:
        if impl == flax:
            continue
        b, a = impls[impl]['before'], impls[impl]['after']
        fb, fa = impls[flax]['before'], impls[flax]['after']
        rb = st.median([x / y for x, y in zip(b, fb)]); ra = st.median([x / y for x, y in zip(a, fa)])
        print(f"| {size} | {impl} | {', '.join(f'{x:.1f}' for x in b)} | {', '.join(f'{x:.1f}' for x in a)} | "
              f"{st.median(a)/st.median(b):.2f} | {rb:.2f} | {ra:.2f} |")
