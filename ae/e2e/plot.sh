#!/usr/bin/env bash
# Plot the e2e figure from a log directory (default: backup_logs/e2e) into figures/e2e/.
# Needs only numpy, matplotlib and tabulate ($PYTHON, default python3).
# Usage: ae/e2e/plot.sh [log_dir] [plot options: --batch 8, --mode compile, --device h200]
#   (no options: batch 1 and batch 8, eager and compiled)
set -euo pipefail
logs=
if (( $# )) && [[ $1 != -* ]]; then logs=$1; shift; fi
[[ -n $logs && $logs != /* ]] && logs="$PWD/$logs"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
plot=("${PYTHON:-python3}" plot/e2e.py --log-dir "${logs:-backup_logs/e2e}" --out figures/e2e)
(( $# )) && exec "${plot[@]}" "$@"
for mode in eager compile; do  # default: both batches, both modes
  for batch in 1 8; do "${plot[@]}" --batch "$batch" --mode "$mode"; done
done
