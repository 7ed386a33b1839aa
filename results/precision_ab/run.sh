#!/usr/bin/env bash
# The manual LSTM layer's training step in fp32 and bf16 (T,B,I,H = 128,64,128,512), in the tree before
# the bf16 matmul change (commit b07f255, checked out at $BEFORE) and in this tree, alternately, with the
# fp32 2048^2 matmul rate measured in each process. Usage: BEFORE=/path/to/worktree bash run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; repo="$(cd "$here/../.." && pwd)"
for i in 1 2; do
  for tree in "$BEFORE" "$repo"; do python "$here/ab.py" "$tree" 128,64,128,512; done
done
