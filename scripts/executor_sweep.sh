#!/usr/bin/env bash
# Issue 8's acceptance on a machine with several GPUs: the same cells of one figure
# (FIGURE, default attn) run with
# --executor local and then --executor multi-gpu, each from a cold Triton cache into its
# own results root; prints both wall times, then `check` with the local run standing in
# for the backup logs (every claim's ratio, multi-gpu / local), and tars the logs.
# Usage: scripts/executor_sweep.sh [work_dir] [tarball]
#   BACKENDS (a short list by default), CELLS (glob, default all), CELL_TIMEOUT (s),
#   SWEEP_LIMIT (s, per executor)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=${1:-results/executor-sweep} tarball=${2:-}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BACKENDS=${BACKENDS:-sparsevit,sdpa_flash,sdpa_cudnn,naive,native_window,native_gather}
py=${PYTHON:-python3}
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader || true
for executor in local multi-gpu; do
  export TRITON_CACHE_DIR=/tmp/triton-cache-$executor
  t0=$(date +%s%N)
  rc=0
  timeout --signal=TERM "${SWEEP_LIMIT:-150}" "$py" -m sparsevit run-figure "${FIGURE:-attn}" \
    --out "$work/$executor/${FIGURE:-attn}" --executor "$executor" --cells "${CELLS:-*}" \
    --cell-timeout "${CELL_TIMEOUT:-90}" || rc=$?
  echo "WALL $executor $(( ($(date +%s%N) - t0) / 1000000 )) ms (exit $rc)"
done
"$py" -m sparsevit.kit.check --results "$work/multi-gpu" --backup "$work/local" || true
[[ -n $tarball ]] && tar czf "$tarball" -C "$work" .
