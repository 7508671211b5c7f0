#!/usr/bin/env bash
# Run characterization figures on one GPU within a wall-clock budget (how the shipped
# backup logs were made; each figure resumes where an earlier run stopped).
# Usage: ae/characterize/backup_run.sh <results_root> <budget_s> <figure>[:<cell_limit_s>[:<skip_regex>]]...
#   e.g. ae/characterize/backup_run.sh results/backup 280 rq1:40 scalability:45:'-flex$'
#   (cells whose id matches skip_regex are not run: no log, drawn NS "no log")
set -uo pipefail
root=${1:?results root} budget=${2:?budget seconds}
shift 2
[[ $root == /* ]] || root="$PWD/$root"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
end=$(( $(date +%s) + budget ))
for item in "$@"; do
  IFS=: read -r fig limit skip <<< "$item"
  limit=${limit:-120}
  left=$(( end - $(date +%s) ))
  if (( left < 15 )); then echo "== $fig: budget spent, not started"; continue; fi
  echo "== $fig (cell limit ${limit}s, ${left}s left, skipping '${skip}') $(date -u +%T)"
  cells=()
  if [[ -n $skip ]]; then
    mapfile -t ids < <("${PYTHON:-python3}" -m sparsevit characterize cells "$fig" | grep -Ev "$skip")
    for id in "${ids[@]}"; do cells+=(--cell "$id"); done
  fi
  timeout -k 10 "$left" "${PYTHON:-python3}" -m sparsevit characterize run "$fig" \
    --out "$root/$fig" --time-limit "$limit" --no-progress "${cells[@]}"
  echo "== $fig exit $? $(date -u +%T)"
done
