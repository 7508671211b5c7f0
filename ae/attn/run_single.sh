#!/usr/bin/env bash
# Run one cell of the attn figure (needs a CUDA GPU); every other log is left as it is.
# Usage: ae/attn/run_single.sh <model>-<resolution> [results_dir]   (ids: ae/attn/cells.sh)
#   e.g. BACKENDS=flex_b64_reordered,sparsevit ae/attn/run_single.sh VisionLongformer-1024
# BACKENDS: 'all' (default) or a comma list of bench-attn backends; BACKEND_TIMEOUT (s,
# default 300) caps each backend, a slower one is logged TLE.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh" attn "$@"
model=${cell%-*} res=${cell##*-}
exec "${PYTHON:-python3}" -m sparsevit bench-attn --model "$model" --resolution "$res" \
  --patch "$(patch_of ae/attn/cells.txt "$model" "$res")" --check \
  --backends "${BACKENDS:-all}" --backend-timeout "${BACKEND_TIMEOUT:-300}" --out "$out"
