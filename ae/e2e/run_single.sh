#!/usr/bin/env bash
# Run one cell of the e2e figure (needs a CUDA GPU): the floor and every backend of one
# model at one resolution, batch and mode; every other log is left as it is.
# Usage: ae/e2e/run_single.sh <model>-<resolution>-b<batch>-<eager|compile> [results_dir]
#   e.g. ae/e2e/run_single.sh RegionViT-S-2048-b1-eager      (ids: ae/e2e/cells.sh)
# BACKENDS: 'all' (default) or a comma list of dense,full,flex,native,sparsevit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh" e2e "$@"
mode=${cell##*-} rest=${cell%-*}
batch=${rest##*-b} rest=${rest%-b*}
res=${rest##*-} model=${rest%-*}
[[ $model == ViT-B16 ]] && model=ViT-B/16
compile=()
[[ $mode == compile ]] && compile=(--compile)
exec "${PYTHON:-python3}" -m sparsevit bench-e2e --model "$model" --resolution "$res" \
  --batch "$batch" --backends "${BACKENDS:-all}" "${compile[@]}" --out "$out"
