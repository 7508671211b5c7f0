#!/usr/bin/env bash
# Plot the overhead figure from a log directory (default: backup_logs/overhead) into
# figures/overhead/. Needs only numpy, matplotlib and tabulate ($PYTHON, default python3).
set -euo pipefail
logs=${1:-}
[[ -n $logs && $logs != /* ]] && logs="$PWD/$logs"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "${PYTHON:-python3}" plot/overhead.py --log-dir "${logs:-backup_logs/overhead}" --out figures/overhead
