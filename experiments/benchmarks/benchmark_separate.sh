#!/usr/bin/env bash
# Each implementation in its own process, back to back on one quiet machine (2026-12-04): torch.nn.LSTM
# inside a JAX process ran 1.4-4x slower than alone (XLA's threads and OpenMP's share the 2 cores).
# GNU OpenMP's default wait policy, then OMP_WAIT_POLICY=ACTIVE for the two OpenMP users.
# Record: results/benchmark_onednn_separate/merged.json (docs/onednn.md#speed)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-results/benchmark_onednn_separate}"  # OUT=... CELLS="rnn" for another record
cells="${CELLS:-lstm gru}"
mkdir -p "$out"
for run in "default lib:manual" "default lib:onednn" "default torch" "active lib:onednn" "active torch"; do
  set -- $run
  policy=$1 impl=$2 name="${2#lib:}_$1"
  env $( [ "$policy" = active ] && echo OMP_WAIT_POLICY=ACTIVE ) \
    "${PYTHON:-python}" -m experiments.benchmarks.benchmark --cells $cells --impls "$impl" --repeats 5 --precisions fp32 bf16 \
    --out "$out/$name.json" > "$out/$name.log" 2>&1
  echo "done $name"
done
# One record, speed ratios recomputed across the three default-policy processes (the ACTIVE runs stay beside it).
"${PYTHON:-python}" -m experiments.tools.merge_benchmarks $out/manual_default.json $out/onednn_default.json \
  $out/torch_default.json --out $out/merged.json
