#!/usr/bin/env bash
# Every cell of one figure through the kit's runner (resumable, locked, per-cell time
# limit, executors local / multi-gpu / slurm); each ae/<figure>/run.sh calls this.
# Usage: ae/run_figure.sh <figure> [results_dir] [runner options]
#   default results/<today>/<figure>; runner options: python3 -m sparsevit run-figure --help
set -euo pipefail
fig=${1:?usage: ae/run_figure.sh <figure> [results_dir] [runner options]}
shift
out=
if (( $# )) && [[ $1 != -* ]]; then out=$1; shift; fi
[[ -n $out && $out != /* ]] && out="$PWD/$out"  # relative to the caller's directory
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m sparsevit run-figure "$fig" --out "${out:-results/$(date +%F)/$fig}" "$@"
