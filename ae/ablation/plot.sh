#!/usr/bin/env bash
# Plot the ablation figure from a log directory (default: backup_logs/ablation) into
# figures/ablation/. Needs only numpy, matplotlib and tabulate ($PYTHON, default python3).
set -euo pipefail
logs=${1:-}
[[ -n $logs && $logs != /* ]] && logs="$PWD/$logs"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "${PYTHON:-python3}" plot/ablation.py --log-dir "${logs:-backup_logs/ablation}" --out figures/ablation
