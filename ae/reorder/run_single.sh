#!/usr/bin/env bash
# Rerun one cell of the reorder figure; every other log is left as it is.
# Usage: ae/reorder/run_single.sh <model> <resolution> <method> [results_dir]
#   e.g. ae/reorder/run_single.sh RegionViT 1792 hc results/2026-01-01/reorder
set -euo pipefail
if (( $# < 3 )); then
  echo "usage: $0 <model> <resolution> <method> [results_dir]" >&2
  exit 2
fi
model=$1 res=$2 method=$3 out=${4:-}
[[ -n $out && $out != /* ]] && out="$PWD/$out"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${out:-results/$(date +%F)/reorder}

patch=$(awk -v m="$model" -v r="$res" '$1 == m { for (i = 3; i <= NF; i++) if ($i == r) print $2 }' \
        ae/reorder/cells.txt)
if [[ -z $patch ]]; then
  echo "run_single.sh: $model at $res px is not a cell of this figure (see ae/reorder/cells.txt)" >&2
  exit 2
fi
exec sparsevit reorder-study --model "$model" --resolution "$res" --patch "$patch" \
  --methods "$method" --tiles 32x32,64x64,128x128 --time-limit "${TIME_LIMIT:-120}" --out "$out"
