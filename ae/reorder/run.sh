#!/usr/bin/env bash
# Reorder figure (CPU only): one log per (model, resolution, reorder method) cell.
# Usage: ae/reorder/run.sh [results_dir]     (default: results/<today>/reorder)
# TIME_LIMIT (seconds, default 120) caps one reorder; a slower one is logged TLE.
set -euo pipefail
out=${1:-}
[[ -n $out && $out != /* ]] && out="$PWD/$out"  # relative to the caller's directory
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${out:-results/$(date +%F)/reorder}
command -v sparsevit >/dev/null || { echo "run.sh: no sparsevit on PATH (make setup)" >&2; exit 2; }

status=0
while read -r model patch resolutions; do
  for res in $resolutions; do
    sparsevit reorder-study --model "$model" --resolution "$res" --patch "$patch" \
      --methods all --tiles 32x32,64x64,128x128 --time-limit "${TIME_LIMIT:-120}" \
      --out "$out" || status=1
  done
done < <(grep -Ev '^[[:space:]]*(#|$)' ae/reorder/cells.txt)
echo "logs in $out; plot them with: ae/reorder/plot.sh $out"
exit $status
