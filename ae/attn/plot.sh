#!/usr/bin/env bash
# Plot the attn figure from a log directory (default: backup_logs/attn) into
# figures/attn/. Needs only numpy, matplotlib and tabulate ($PYTHON, default python3).
set -euo pipefail
logs=${1:-}
[[ -n $logs && $logs != /* ]] && logs="$PWD/$logs"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec "${PYTHON:-python3}" plot/attn.py --log-dir "${logs:-backup_logs/attn}" --out figures/attn
