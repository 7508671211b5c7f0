#!/usr/bin/env bash
# Start `make full-run` in a detached tmux session; everything it prints also goes to
# <results>/full-run.log. Survives a dropped ssh connection; rerun to resume.
# Usage: scripts/full_run_tmux.sh [make variables]
#   e.g. scripts/full_run_tmux.sh EXECUTOR=multi-gpu RUN_ARGS="--cell-timeout 1800"
# RESULTS (default results/<today>) is fixed when the session starts, so a resumed run
# writes to the same directory even after midnight. SESSION names the tmux session.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v tmux >/dev/null || { echo "full_run_tmux.sh: tmux is not installed" >&2; exit 2; }
session=${SESSION:-sparsevit-full-run}
results=${RESULTS:-results/$(date +%F)}
if tmux has-session -t "$session" 2>/dev/null; then
  echo "tmux session '$session' is already running: tmux attach -t $session" >&2
  exit 1
fi
mkdir -p "$results"
log=$(cd "$results" && pwd)/full-run.log
args=$(printf ' %q' "RESULTS=$results" "$@")
# A shell first, its output piped to the log, then the run typed into it: nothing is
# missed, the progress bar still sees a terminal, and the shell stays for a look after.
tmux new-session -d -s "$session" -c "$PWD"
tmux pipe-pane -o -t "$session" "cat >> $(printf '%q' "$log")"
tmux send-keys -t "$session" "make full-run$args; echo \"full-run ended with exit \$?\"" Enter
cat <<MSG
full-run started in tmux session '$session'
  results: $results    log: $log
  attach:  tmux attach -t $session      detach again: Ctrl-b then d
  resume after a stop:$(printf ' %q' "RESULTS=$results") scripts/full_run_tmux.sh$(printf ' %q' "$@")
  afterwards: make check RESULTS=$results
MSG
