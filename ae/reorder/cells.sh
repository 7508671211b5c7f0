#!/usr/bin/env bash
# The reorder figure's cells, one id per line: <model>-<resolution>-<method> for every
# resolution of each line of cells.txt and every reorder method of sparsevit.reorder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
methods=$(PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -c \
  'from sparsevit.reorder import METHODS; print(" ".join(METHODS))')
awk -v methods="$methods" '{ sub(/#.*/, "") } NF >= 3 {
  n = split(methods, m, " ")
  for (i = 3; i <= NF; i++) for (j = 1; j <= n; j++) print $1 "-" $i "-" m[j] }' ae/reorder/cells.txt
