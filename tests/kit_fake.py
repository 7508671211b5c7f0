"""A fake kit checkout for the runner tests: one figure whose cells are tiny shell steps.

Cell ids say what the cell does: ``ok-*`` writes its log, ``busy-*`` does so after 0.3 s,
``slow-*`` sleeps $FAKE_SLEEP seconds first, ``fail-*`` prints to stderr and exits 3
(unless $FAKE_FIX is set). Every start and end is appended to ``calls.txt`` with the
cell's GPU, executor, process group and time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

RUN_SINGLE = r"""#!/usr/bin/env bash
set -euo pipefail
cell=$1 out=$2
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
gpu=${CUDA_VISIBLE_DEVICES:-unset}
echo "start $cell $gpu ${SPARSEVIT_EXECUTOR:-none} $$ $(date +%s.%N)" >> calls.txt
case $cell in
  fail*) if [[ -z ${FAKE_FIX:-} ]]; then
           echo 'RESULT {"status": "OK", "value": 7}' >&2
           echo "boom: cell $cell broke" >&2; exit 3; fi ;;
  slow*) touch "started-$cell"; sleep "${FAKE_SLEEP:-30}" ;;
  busy*) sleep 0.3 ;;
esac
mkdir -p "$out"
tmp=$(mktemp "$out/.tmp.XXXXXX")
printf '# sparsevit-log v1\n# cuda_visible_devices: %s\nRESULT {"status": "OK", "value": 1}\n' \
  "$gpu" > "$tmp"
mv "$tmp" "$out/fake.cpu.$cell.1.sys.log"
echo "end $cell $gpu ${SPARSEVIT_EXECUTOR:-none} $$ $(date +%s.%N)" >> calls.txt
"""


def make_root(root: Path, cells: list[str]) -> Path:
    fig = root / "ae" / "fake"
    fig.mkdir(parents=True)
    (fig / "cells.txt").write_text("\n".join(cells) + "\n")
    (fig / "cells.sh").write_text('#!/usr/bin/env bash\ncat "$(dirname "$0")/cells.txt"\n')
    (fig / "run_single.sh").write_text(RUN_SINGLE)
    (root / "Makefile").write_text("# fake\n")
    return root


def calls(root: Path, kind: str = "start") -> list[list[str]]:
    path = root / "calls.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[1:] for line in lines if line.split()[0] == kind]


def runner_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sparsevit", "run-figure", "fake", "--root", str(root),
            "--out", str(out), *extra]


def run(root: Path, out: Path, *extra: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run(runner_cmd(root, out, *extra), capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)
