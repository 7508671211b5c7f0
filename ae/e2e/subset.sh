#!/usr/bin/env bash
# The subset of e2e cells a short GPU session can run (the shipped backup logs), each
# under its own time limit so one slow cell cannot starve the rest; a killed cell keeps
# the logs of the backends it finished, the rest of it stays NS.
# Usage: ae/e2e/subset.sh [results_dir]        (default: results/<today>/e2e)
set -uo pipefail
out=${1:-}
[[ -n $out && $out != /* ]] && out="$PWD/$out"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${out:-results/$(date +%F)/e2e}
status=0
while read -r cell limit; do
  echo "== $cell (limit ${limit}s)"
  timeout "$limit" bash ae/e2e/run_single.sh "$cell" "$out" || { echo "== $cell: exit $?"; status=1; }
done <<'CELLS'
RegionViT-S-2048-b1-eager 75
ViL-S-2048-b1-eager 75
DynamicViT-S-2048-b1-eager 50
ViT-B16-2048-b1-eager 40
RegionViT-S-512-b1-compile 40
CELLS
exit $status
