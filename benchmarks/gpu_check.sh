#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU check"): the CUDA tests, Cora GCN and GAT through the CLI,
# a minibatch epoch fed through the tiered store to the GPU, the kernel benchmark and 200 bf16 steps of
# the digits DiT, in under 8 minutes on one GPU. Without CUDA it runs the CPU fallbacks and says which
# GPU figures are missing. Writes gpu_check.json and summary.md.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--small] [more gpu_check.py flags]
#
# OUT_DIR defaults to $OUT, else ./gpu_check_out. --small: small sizes (the CPU fallback, minutes on 2 cores).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-gpu_check_out}"
if [[ $# -gt 0 && "$1" != --* ]]; then
    out="$1"
    shift
fi
mkdir -p "$out"
python="${PYTHON:-python}"
export DGLBACKEND=pytorch
# The whole check stops at 8 minutes; each command inside has its own limit (--part-timeout).
timeout --signal=INT --kill-after=20 480 "$python" "$here/gpu_check.py" --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
