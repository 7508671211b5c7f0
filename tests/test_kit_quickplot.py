"""make quick-plot's promise, for every figure the kit has (discovered, so new figures are
covered): ae/<fig>/plot.sh draws PDF and PNG from its backup logs, and a figure with no
backup logs yet still draws (NS marks) and says so instead of crashing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIGURES = sorted(p.parent.name for p in (REPO / "ae").glob("*/plot.sh"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's ae/, plot/ and src/ (linked) with its own backup_logs/ and figures/,
    so the plots write nowhere in the repo. A figure without backup logs gets an empty
    directory: what a reviewer has before its first GPU run."""
    root = tmp_path_factory.mktemp("quickplot")
    for name in ("ae", "plot", "src"):
        (root / name).symlink_to(REPO / name)
    for figure in FIGURES:
        logs = REPO / "backup_logs" / figure
        if logs.is_dir():
            (root / "backup_logs" / figure).parent.mkdir(exist_ok=True)
            (root / "backup_logs" / figure).symlink_to(logs)
        else:
            (root / "backup_logs" / figure).mkdir(parents=True)
    return root


# The quick-plot venv has only numpy, matplotlib and tabulate: the plots run here with
# the heavier packages made unimportable, so an import of one fails this test.
NOT_IN_QUICK_PLOT = ("torch", "triton", "scipy", "sparsevit", "highspy", "tqdm", "gurobipy")


@pytest.fixture(scope="module")
def without_heavy_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in NOT_IN_QUICK_PLOT))
    return site


@pytest.mark.parametrize("figure", FIGURES)
def test_plot_from_backup_logs(tree: Path, without_heavy_packages: Path, figure: str) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "MPLBACKEND": "Agg",
           "PYTHONPATH": str(without_heavy_packages)}
    proc = subprocess.run(["bash", str(tree / "ae" / figure / "plot.sh")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tree / "figures" / figure
    assert list(out.glob("*.pdf")) and list(out.glob("*.png")), f"nothing drawn in {out}"
    if not any((REPO / "backup_logs" / figure).glob("*.log")):
        assert "NS" in proc.stdout + proc.stderr and "warning" in proc.stderr
