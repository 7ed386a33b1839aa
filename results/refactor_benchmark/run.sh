#!/bin/bash
# Before/after the refactor, same harness (the pre-refactor experiments/benchmark.py), alternating.
# /work/before: a worktree of 0a580f4 (before the restructuring); /tmp/bench_new: a copy of that
# commit's experiments/benchmark.py beside a symlink lstm_jax -> the restructured library.
PY=/work/main/.venv/bin/python
for round in 1 2; do
  for side in before after; do
    if [ $side = before ]; then dir=/work/before; else dir=/tmp/bench_new; fi
    echo "== round $round $side $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $dir && $PY experiments/benchmark.py --cells lstm --impls lib:manual,lib:scan,flax --repeats 5 \
        --out /tmp/bench/${side}_${round}.json) > /tmp/bench/${side}_${round}.log 2>&1
    echo "   done $(date +%T) rc=$?"
  done
done
