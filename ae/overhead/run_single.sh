#!/usr/bin/env bash
# Run one cell of the overhead figure (needs a CUDA GPU and a profile of it: PROFILE=path, or
# the cache `sparsevit profile` fills); every other log is left as it is.
# Usage: ae/overhead/run_single.sh <model>-<resolution> [results_dir]   (ids: ae/overhead/cells.sh)
set -euo pipefail
[[ -n ${PROFILE:-} && $PROFILE != /* ]] && PROFILE="$PWD/$PROFILE"
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh" overhead "$@"
model=${cell%-*} res=${cell##*-}
exec "${PYTHON:-python3}" -m sparsevit overhead --model "$model" --resolution "$res" \
  --patch "$(patch_of ae/overhead/cells.txt "$model" "$res")" ${PROFILE:+--profile "$PROFILE"} \
  --out "$out"
