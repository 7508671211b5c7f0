#!/usr/bin/env bash
# Run one cell of the reorder figure (CPU only); every other log is left as it is.
# Usage: ae/reorder/run_single.sh <model>-<resolution>-<method> [results_dir]
#   e.g. ae/reorder/run_single.sh RegionViT-1792-hc results/2026-01-01/reorder
# TIME_LIMIT (seconds, default 120) caps one reorder; a slower one is logged TLE.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh" reorder "$@"
IFS=- read -r model res method <<< "$cell"
exec "${PYTHON:-python3}" -m sparsevit reorder-study --model "$model" --resolution "$res" \
  --patch "$(patch_of ae/reorder/cells.txt "$model" "$res")" --methods "$method" \
  --tiles 32x32,64x64,128x128 --time-limit "${TIME_LIMIT:-120}" --out "$out"
