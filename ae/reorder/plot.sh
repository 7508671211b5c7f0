#!/usr/bin/env bash
# Plot the reorder figure from a log directory (default: backup_logs/reorder) into
# figures/reorder/. Needs only numpy, matplotlib and tabulate ($PYTHON, default python3).
set -euo pipefail
logs=${1:-}
[[ -n $logs && $logs != /* ]] && logs="$PWD/$logs"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "${PYTHON:-python3}" plot/reorder.py --log-dir "${logs:-backup_logs/reorder}" \
  --out figures/reorder
