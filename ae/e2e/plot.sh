#!/usr/bin/env bash
# Plot the e2e figure from a log directory (default: backup_logs/e2e) into figures/e2e/.
# Needs only numpy, matplotlib and tabulate ($PYTHON, default python3).
# Usage: ae/e2e/plot.sh [log_dir] [plot options: --batch 8, --mode compile, --device h200]
set -euo pipefail
logs=
if (( $# )) && [[ $1 != -* ]]; then logs=$1; shift; fi
[[ -n $logs && $logs != /* ]] && logs="$PWD/$logs"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "${PYTHON:-python3}" plot/e2e.py --log-dir "${logs:-backup_logs/e2e}" --out figures/e2e "$@"
