#!/usr/bin/env bash
# Attn figure (needs a CUDA GPU): one log per (model, resolution, backend) cell, every
# output checked against the fp32 reference.
# Usage: ae/attn/run.sh [results_dir]     (default: results/<today>/attn)
set -euo pipefail
out=${1:-}
[[ -n $out && $out != /* ]] && out="$PWD/$out"  # relative to the caller's directory
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${out:-results/$(date +%F)/attn}
command -v sparsevit >/dev/null || { echo "run.sh: no sparsevit on PATH (make setup)" >&2; exit 2; }

status=0
while read -r model patch resolutions; do
  for res in $resolutions; do
    sparsevit bench-attn --model "$model" --resolution "$res" --patch "$patch" --check \
      --out "$out" || status=1
  done
done < <(grep -Ev '^[[:space:]]*(#|$)' ae/attn/cells.txt)
echo "logs in $out; plot them with: ae/attn/plot.sh $out"
exit $status
