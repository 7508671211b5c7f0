#!/usr/bin/env bash
# The figure-convention scripts of the characterization figures (rq1..rq5, scalability),
# shared: ae/<fig>/{cells,run,run_single,plot}.sh each call this with their figure name.
# Usage: figure.sh cells <fig>
#        figure.sh run_single <fig> <cell_id> [results_dir]
#        figure.sh run <fig> [results_dir] [run-figure options]
#        figure.sh plot <fig> [log_dir]
set -euo pipefail
action=${1:?action} fig=${2:?figure}
shift 2
arg=
if [[ $action != cells ]] && (( $# )) && [[ $1 != -* ]]; then arg=$1; shift; fi
caller=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
abs() { [[ -z $1 || $1 == /* ]] && echo "$1" || echo "$caller/$1"; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
case $action in
  cells)
    exec "$py" -m sparsevit characterize cells "$fig" ;;
  run_single)
    [[ -n $arg ]] || { echo "usage: ae/$fig/run_single.sh <cell_id> [results_dir]" >&2; exit 2; }
    out=$(abs "${1:-}")
    exec "$py" -m sparsevit characterize run "$fig" --cell "$arg" --no-progress \
      --out "${out:-results/$(date +%F)/$fig}" ;;
  run)
    out=$(abs "$arg")
    exec ae/run_figure.sh "$fig" ${out:+"$out"} "$@" ;;
  plot)
    logs=$(abs "$arg")
    script=plot/characterize.py
    [[ $fig == scalability ]] && script=plot/scalability.py
    exec "$py" "$script" --figure "$fig" --log-dir "${logs:-backup_logs/$fig}" \
      --out "figures/$fig" ;;
  *)
    echo "figure.sh: unknown action $action" >&2; exit 2 ;;
esac
