#!/usr/bin/env bash
# The overhead figure's cells, one id per line: <model>-<resolution> for every resolution of
# each line of cells.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
awk '{ sub(/#.*/, "") } NF >= 3 { for (i = 3; i <= NF; i++) print $1 "-" $i }' cells.txt
