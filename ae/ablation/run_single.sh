#!/usr/bin/env bash
# Run one cell of the ablation figure (needs a CUDA GPU and a profile of it: PROFILE=path, or
# the cache `sparsevit profile` fills); every other log is left as it is.
# Usage: ae/ablation/run_single.sh <model>-<resolution> [results_dir]   (ids: ae/ablation/cells.sh)
set -euo pipefail
[[ -n ${PROFILE:-} && $PROFILE != /* ]] && PROFILE="$PWD/$PROFILE"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh" ablation "$@"
model=${cell%-*} res=${cell##*-}
exec "${PYTHON:-python3}" -m sparsevit ablation --model "$model" --resolution "$res" \
  --patch "$(patch_of ae/ablation/cells.txt "$model" "$res")" ${PROFILE:+--profile "$PROFILE"} \
  --out "$out"
