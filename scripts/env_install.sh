#!/usr/bin/env bash
# Bare-metal install on a GPU machine (no container), into the active Python environment,
# which must already hold a CUDA 12+ build of torch >= 2.5 (the one you want measured):
# the kit, HiGHS, Gurobi, submitit, flash-attn built from source for one GPU generation;
# then env-check and the correctness tests on that GPU.
# Usage: scripts/env_install.sh <sm>     80 = A100, 90 = H100/H200
#   PYTHON (default python3), MAX_JOBS (flash-attn build jobs, default 4: ~5 GB RAM each),
#   SKIP_FLASH_ATTN=1 to leave the optional flash-attn baseline out.
# Versions are the container's (docker/Dockerfile ARGs), so both installs match.
set -euo pipefail
sm=${1:-}
if [[ ! $sm =~ ^[0-9]{2,3}$ ]]; then
  echo "usage: $0 <sm>   (80 = A100, 90 = H100/H200)" >&2
  exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-python3}
pin() { sed -n "s/^ARG $1=//p" docker/Dockerfile; }

"$py" - <<'PY' || exit 2
import sys
try:
    import torch
except ImportError:
    sys.exit("env_install.sh: no torch here; install a CUDA 12 build first, e.g. "
             "pip install torch --index-url https://download.pytorch.org/whl/cu126")
cuda = torch.version.cuda
if not cuda or int(cuda.split(".")[0]) < 12:
    sys.exit(f"env_install.sh: torch {torch.__version__} is built for CUDA {cuda}; need 12+")
if not torch.cuda.is_available():
    sys.exit("env_install.sh: torch sees no GPU (driver too old? see README, Troubleshooting)")
print(f"torch {torch.__version__}, CUDA {cuda}, {torch.cuda.get_device_name(0)}")
PY
have=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
[[ -n $have && $have != "$sm" ]] && echo "warning: this GPU is sm_$have, building for sm_$sm" >&2

# Hold the installed torch/triton/numpy: nothing below may replace them.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$py" -m pip list --format=freeze | grep -iE '^(torch|triton|pytorch-triton|numpy)==' > "$constraints"
pip_install() { "$py" -m pip install --no-cache-dir -c "$constraints" "$@"; }

pip_install -e ".[gpu,slurm,dev]" "highspy==$(pin HIGHSPY_VERSION)" \
  "submitit==$(pin SUBMITIT_VERSION)"
pip_install "gurobipy==$(pin GUROBIPY_VERSION)" \
  || echo "warning: gurobipy not installed; the scheduler uses HiGHS" >&2
if [[ ${SKIP_FLASH_ATTN:-0} != 1 ]]; then
  MAX_JOBS=${MAX_JOBS:-4} FLASH_ATTN_CUDA_ARCHS=$sm FLASH_ATTENTION_FORCE_BUILD=TRUE \
    pip_install --no-build-isolation "flash-attn==$(pin FLASH_ATTN_VERSION)"
  "$py" -c "import flash_attn, flash_attn_2_cuda; print('flash-attn', flash_attn.__version__)"
fi

"$py" -m sparsevit env-check || true
echo "== correctness tests on this GPU"
"$py" -m pytest -q -m gpu tests/
