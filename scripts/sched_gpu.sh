#!/usr/bin/env bash
# Device driver for the scheduling work (T3/T4): writes everything under $OUT.
#   scripts/sched_gpu.sh smoke   profile this GPU (-> $OUT/profile.json) and run one
#                                ablation and one overhead cell
#   scripts/sched_gpu.sh full    every overhead and ablation cell (backup logs) with
#                                PROFILE (profiling first when it is not of this GPU),
#                                one worker per GPU pulling cells from a shared queue;
#                                no cell starts DEADLINE_S seconds after the start
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
run_cell() {  # figure cell gpu
  if (( $(date +%s) - start > ${DEADLINE_S:-250} )); then echo "deadline: $1 $2 not run"; return; fi
  local t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=$3 timeout "${CELL_TIMEOUT:-150}" ae/$1/run_single.sh "$2" "$out/logs/$1" \
    > "$out/stdout/$1.$2.txt" 2>&1
  echo "$1 $2 gpu$3 rc=$? $(( $(date +%s) - t0 )) s"
}
mkdir -p "$out/stdout" "$out/claims"
if [[ $mode == smoke ]]; then
  run_cell ablation VisionLongformer-1024 0
  run_cell overhead VisionLongformer-1024 0
  cat "$out"/stdout/*.txt | grep -v "it/s\]" | tail -40
else
  # Heaviest first: 2048 px ablation cells, then the rest, overhead cells last.
  mapfile -t queue < <(bash ae/ablation/cells.sh | sort -t- -k2 -nr | sed 's/^/ablation /';
                       bash ae/overhead/cells.sh | sort -t- -k2 -nr | sed 's/^/overhead /')
  n_gpu=$(nvidia-smi -L | wc -l)
  for ((g = 0; g < n_gpu; g++)); do
    (for item in "${queue[@]}"; do
       set -- $item
       mkdir "$out/claims/$1.$2" 2>/dev/null && run_cell "$1" "$2" "$g"
     done) &
  done
  wait
fi
[[ -d $out/logs ]] && tar czf "$out/logs.tgz" -C "$out/logs" .
tar czf "$out/stdout.tgz" -C "$out/stdout" .
echo "elapsed $(( $(date +%s) - start )) s"
