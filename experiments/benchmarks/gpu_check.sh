#!/usr/bin/env bash
# One-shot check of lstm_jax on an NVIDIA GPU. First run on an H200 on 2026-12-04 (docs/gpu.md): XLA:GPU compiles
# take ~15 s per benchmark variant there, so everything takes about 25 minutes; GPU_CHECK_STEPS runs a part.
#
#   bash experiments/benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR: first argument, else $OUT, else runs/gpu_check
#
# Runs from the source tree (PYTHONPATH=., no install, no network) with the Python on PATH (or $PYTHON),
# which needs jax with CUDA, flax, optax, orbax-checkpoint, equinox, torch and pytest; TensorFlow,
# TFDS and matplotlib may be missing (the tests that need them skip, plots are left out).
# Every step runs under `timeout` with its own log in OUT_DIR, so a hang or failure costs only that step:
#
#   env         nvidia-smi, versions (python, jax, jaxlib, CUDA/cuDNN via jax.print_environment_info(),
#               torch + its CUDA/cuDNN, flax, ...) -> nvidia-smi.txt, versions.txt
#   tests_gpu   the tests that matter most on a GPU: tests/test_cudnn.py (cudnn vs scan at "highest",
#               the TF32 tolerance), tests/test_impls.py, tests/test_precision.py -> junit_gpu.xml
#   benchmark_<i>  experiments/benchmarks/benchmark.py, LSTM, one process per size of SIZES below (the last,
#               FlashRNN's, first), lib:scan, lib:manual, lib:cudnn (fp32 only: it has no bf16 policy), flax,
#               torch-cuda, jax-cudnn, fp32 and bf16 -> benchmark_<i>.json
#   scaling_*   experiments/benchmarks/scaling.py --only sizes (batch, sequence length, hidden size) for impl
#               cudnn and manual -> scaling_<impl>.json
#   parallel_time experiments/benchmarks/parallel_time.py, minGRU/minLSTM parallel vs the sequential LSTM, T up to
#               16384 (does its time grow sub-linearly in T on a GPU?) -> parallel_time.json
#   tests_rest  the rest of the fast suite (-m 'not slow'), cut off by the overall deadline -> junit_rest.xml
#   (pytest runs with -o addopts=-ra: the GPU machine's Python has no pytest-xdist, which pyproject's addopts use)
#   summary     summary.txt: each step's exit status, seconds, test counts, benchmark medians
#
# Step timeouts send SIGINT first (pytest then still writes its junit file and summary).
# Environment:
#   GPU_CHECK_QUICK=1      dry run on any machine (CPU included): benchmark --quick sizes, 1 repeat of the
#                          scaling --quick sweep, tests_gpu = tests/test_cudnn.py only, no tests_rest
#   GPU_CHECK_BUDGET_S     overall deadline in seconds (default 570); each step's timeout is the smaller of
#                          its own cap and the time left
#   GPU_CHECK_MAXFAIL      pytest --maxfail (default 5: one run should report more than the first failure)
#   GPU_CHECK_STEPS        space-separated step names to run (default: all), e.g. "env scaling_cudnn tests_rest"
#                          for a second run that finishes what the first could not
#   PYTHON                 interpreter (default: python)

set -u
cd "$(dirname "$0")/../.." || exit 2
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python}"
QUICK="${GPU_CHECK_QUICK:-0}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-570}"
MAXFAIL="${GPU_CHECK_MAXFAIL:-5}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# The benchmark sizes, T,B,I,H (tests/test_gpu_check.py checks these against the GPU issue's list).
# The last is FlashRNN's published configuration (one layer, T=1024, B=16, H=768; input 768).
SIZES="100,256,65,1024;512,128,256,512;256,512,512,1024;784,256,1,128;28,1024,28,128;1024,16,768,768"
BENCH_IMPLS="lib:scan,lib:manual,lib:cudnn,flax,torch-cuda,jax-cudnn"
GPU_TESTS="tests/test_cudnn.py tests/test_impls.py tests/test_precision.py"

START=$(date +%s)
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"

# step NAME CAP_SECONDS [ENV=VALUE ...] COMMAND...: run COMMAND with a timeout, log to NAME.log, record rc.
step() {
    local name=$1 cap=$2 left limit t0 rc
    shift 2
    if [ -n "${GPU_CHECK_STEPS:-}" ] && ! [[ " $GPU_CHECK_STEPS " == *" $name "* ]]; then
        printf '%-16s skipped: not in GPU_CHECK_STEPS\n' "$name" | tee -a "$SUMMARY"
        return 0
    fi
    left=$((BUDGET_S - ($(date +%s) - START)))
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 10 ]; then
        printf '%-16s skipped: the overall deadline (%ss) is reached\n' "$name" "$BUDGET_S" | tee -a "$SUMMARY"
        return 0
    fi
    echo "== $name (timeout ${limit}s): $(printf '%s' "$*" | head -n 1 | cut -c 1-240)" | tee -a "$OUT_DIR/steps.log"
    t0=$(date +%s)
    timeout -s INT -k 20 "$limit" env "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    local note=""
    case $rc in 0) note="ok" ;; 124|137) note="TIMED OUT" ;; *) note="FAILED" ;; esac
    printf '%-16s rc=%-4s %5ss  %-10s %s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$note" "$name.log" | tee -a "$SUMMARY"
    return 0
}

# --------------------------------------------------------------------------- env
if command -v nvidia-smi > /dev/null; then
    nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1
else
    echo "nvidia-smi not found" > "$OUT_DIR/nvidia-smi.txt"
fi
step env 90 "$PY" -c '
import importlib, importlib.util, platform, sys
print("python", platform.python_version(), sys.executable)
import jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__)
print("jax.default_backend()", jax.default_backend(), "devices", jax.devices())
jax.print_environment_info()
for name in ("flax", "optax", "orbax.checkpoint", "equinox", "numpy", "pytest", "torch",
             "tensorflow", "tensorflow_datasets", "matplotlib"):
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        print(name, "not installed")
        continue
    mod = importlib.import_module(name) if name not in ("tensorflow", "tensorflow_datasets") else None
    print(name, getattr(mod, "__version__", "installed (not imported: slow)"))
try:
    import torch
    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          "cudnn", torch.backends.cudnn.version(), "cudnn.allow_tf32", torch.backends.cudnn.allow_tf32)
    if torch.cuda.is_available():
        print("torch device", torch.cuda.get_device_name())
except ImportError:
    pass
from lstm_jax.impls import IMPLS
print("impl cudnn:", IMPLS["cudnn"].unavailable() or "available")
'
cp "$OUT_DIR/env.log" "$OUT_DIR/versions.txt" 2> /dev/null
BACKEND=$(sed -n 's/^jax.default_backend() \([a-z]*\) .*/\1/p' "$OUT_DIR/env.log")
echo "jax backend: ${BACKEND:-unknown}" | tee -a "$SUMMARY"

# --------------------------------------------------------------------------- tests, GPU-relevant first
# No preallocation: some tests start subprocesses, each of which would otherwise claim 75% of the GPU.
if [ "$QUICK" = 1 ]; then GPU_TESTS="tests/test_cudnn.py"; fi
# shellcheck disable=SC2086
step tests_gpu 200 XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m pytest -o addopts=-ra -m "not slow" -q -p no:cacheprovider \
    --maxfail="$MAXFAIL" --durations=10 --junitxml="$OUT_DIR/junit_gpu.xml" $GPU_TESTS

# --------------------------------------------------------------------------- benchmark
# JAX keeps 60% of the GPU, torch (same process) gets the rest.
if [ "$QUICK" = 1 ]; then
    step benchmark 240 "$PY" -m experiments.benchmarks.benchmark --quick --cells lstm --impls "$BENCH_IMPLS" \
        --precisions fp32,bf16 --out "$OUT_DIR/benchmark.json"
else
    # One process and one JSON per size, FlashRNN's first: on the H200 each XLA variant took ~15 s to compile, so
    # all sizes in one process ran past the step's cap and lost everything (2026-12-04, docs/gpu.md).
    IFS=';' read -ra SIZE_LIST <<< "$SIZES"
    for i in $(seq $((${#SIZE_LIST[@]} - 1)) -1 0); do
        step "benchmark_$i" 150 XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 "$PY" -m experiments.benchmarks.benchmark --cells lstm \
            --sizes "${SIZE_LIST[$i]}" --impls "$BENCH_IMPLS" --precisions fp32,bf16 --repeats 5 --block-seconds 0.2 \
            --out "$OUT_DIR/benchmark_$i.json"
    done
fi

# --------------------------------------------------------------------------- scaling
SCALING_IMPLS="cudnn manual"
if [ "$BACKEND" != gpu ]; then SCALING_IMPLS="manual"; fi  # cudnn is refused off a GPU
SCALING_FLAGS="--only sizes --repeats 3 --budget-minutes 1"
if [ "$QUICK" = 1 ]; then SCALING_FLAGS="--only sizes --quick"; fi
for impl in $SCALING_IMPLS; do
    # shellcheck disable=SC2086
    step "scaling_$impl" 90 "$PY" -m experiments.benchmarks.scaling --impl "$impl" $SCALING_FLAGS \
        --out "$OUT_DIR/scaling_$impl.json"
done

# --------------------------------------------------------------------------- parallel in time (issue: sub-linear in T on a GPU)
if [ "$QUICK" = 1 ]; then
    step parallel_time 120 "$PY" -m experiments.benchmarks.parallel_time --quick --cases manual,min_gru-parallel,min_gru-scan \
        --out "$OUT_DIR/parallel_time.json"
else
    step parallel_time 120 "$PY" -m experiments.benchmarks.parallel_time --cases manual,min_gru-parallel,min_lstm-parallel,min_gru-scan \
        --batch-size 16 --input 64 --hidden 256 --lengths 256 1024 4096 16384 --repeats 3 --budget-minutes 1.5 \
        --out "$OUT_DIR/parallel_time.json"
fi

# --------------------------------------------------------------------------- the rest of the fast suite
if [ "$QUICK" = 1 ]; then
    printf '%-16s skipped (GPU_CHECK_QUICK=1)\n' tests_rest | tee -a "$SUMMARY"
else
    IGNORE=""
    for f in $GPU_TESTS; do IGNORE="$IGNORE --ignore=$f"; done
    # shellcheck disable=SC2086
    step tests_rest 600 XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m pytest -o addopts=-ra -m "not slow" -q -p no:cacheprovider \
        --maxfail="$MAXFAIL" --durations=10 --junitxml="$OUT_DIR/junit_rest.xml" $IGNORE
fi

# --------------------------------------------------------------------------- summary
"$PY" - "$OUT_DIR" 2>&1 <<'EOF' | tee -a "$SUMMARY"
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
for junit in sorted(out.glob("junit_*.xml")):
    try:
        suite = ET.parse(junit).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
        bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
               if c.find("failure") is not None or c.find("error") is not None]
        print(f"{junit.name}: {counts}" + "".join(f"\n  failed: {b}" for b in bad))
    except (ET.ParseError, OSError, AttributeError) as err:
        print(f"{junit.name}: unreadable ({err})")
for bench in sorted(out.glob("benchmark*.json")):
    data = json.loads(bench.read_text())
    print(f"benchmark: backend {data['environment'].get('jax_backend')}, "
          f"matmul peak {data.get('matmul_gflops_peak_used', 0):.0f} GFLOP/s (jnp.dot 2048^2)")
    for entry in data["results"]:
        s = entry["size"]
        print(f"  T={s['T']} B={s['B']} I={s['I']} H={s['H']}: " + "; ".join(
            f"{r['impl']} {r['median_ms']:.2f} ms" for r in entry["rows"]))
for scaling in sorted(out.glob("scaling_*.json")):
    rows = json.loads(scaling.read_text())["rows"]
    print(f"{scaling.stem}: " + "; ".join(f"{r['sweep']}={r[r['sweep']]} {1e3 * r['step_s']:.2f} ms" for r in rows))
EOF
echo "total $(($(date +%s) - START))s; everything is in $OUT_DIR (summary.txt: the lines above)" | tee -a "$SUMMARY"
