#!/usr/bin/env bash
# Rerun one cell of the attn figure (all backends, or a comma list); every other log is
# left as it is.
# Usage: ae/attn/run_single.sh <model> <resolution> [backends] [results_dir]
#   e.g. ae/attn/run_single.sh VisionLongformer 1024 flex_b64_reordered,sparsevit
set -euo pipefail
if (( $# < 2 )); then
  echo "usage: $0 <model> <resolution> [backends] [results_dir]" >&2
  exit 2
fi
model=$1 res=$2 backends=${3:-all} out=${4:-}
[[ -n $out && $out != /* ]] && out="$PWD/$out"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${out:-results/$(date +%F)/attn}

patch=$(awk -v m="$model" -v r="$res" '$1 == m { for (i = 3; i <= NF; i++) if ($i == r) print $2 }' \
        ae/attn/cells.txt)
if [[ -z $patch ]]; then
  echo "run_single.sh: $model at $res px is not a cell of this figure (see ae/attn/cells.txt)" >&2
  exit 2
fi
exec sparsevit bench-attn --model "$model" --resolution "$res" --patch "$patch" --check \
  --backends "$backends" --out "$out"
