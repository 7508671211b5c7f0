#!/usr/bin/env bash
# Device driver for the scheduling work (T3/T4): writes everything under $OUT.
#   scripts/sched_gpu.sh smoke   profile this GPU (-> $OUT/profile.json) and run one
#                                ablation and one overhead cell
#   scripts/sched_gpu.sh full    every ablation and overhead cell (backup logs) with
#                                PROFILE (profiling first when it is not of this GPU),
#                                through the kit runner on every GPU, within DEADLINE_S
set -uo pipefail
mode=${1:?usage: $0 smoke|full}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 SPARSEVIT_CACHE=/tmp/svcache
out=${OUT:?OUT must be set}
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
profile=${PROFILE:-}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
if [[ -z $profile ]] || ! grep -q "\"gpu\": \"$gpu\"" "$profile"; then
  timeout "${PROFILE_TIMEOUT:-200}" python3 -m sparsevit profile --output "$out/profile.json" \
    2> >(tail -20 >&2) || echo "profile failed or timed out"
  profile=$out/profile.json
fi
export PROFILE=$profile
mkdir -p "$out/stdout"
if [[ $mode == smoke ]]; then
  for fig in ablation overhead; do
    timeout "${CELL_TIMEOUT:-150}" ae/$fig/run_single.sh VisionLongformer-1024 "$out/logs/$fig" \
      > "$out/stdout/$fig.txt" 2>&1
    echo "$fig VisionLongformer-1024 rc=$?"
  done
  cat "$out"/stdout/*.txt | grep -v "it/s\]" | tail -40
else
  # The kit runner: one worker per GPU, a TLE log for a cell over its limit; what is
  # still running at the deadline is ended cleanly and stays not done.
  for fig in ablation overhead; do
    left=$(( ${DEADLINE_S:-250} - ($(date +%s) - start) ))
    (( left > 0 )) || { echo "deadline: $fig not started"; continue; }
    timeout --signal=TERM "$left" ae/run_figure.sh "$fig" "$out/logs/$fig" \
      --executor multi-gpu --cell-timeout "${CELL_TIMEOUT:-150}" > "$out/stdout/$fig.txt" 2>&1
    echo "$fig rc=$?"
  done
fi
[[ -d $out/logs ]] && tar czf "$out/logs.tgz" -C "$out/logs" .
tar czf "$out/stdout.tgz" -C "$out/stdout" .
echo "elapsed $(( $(date +%s) - start )) s"
