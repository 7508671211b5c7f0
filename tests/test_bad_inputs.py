"""One-line errors (exit 2) for bad input across the kit's commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsevit import cli
from sparsevit.errors import SparseVitError
from sparsevit.kit import check

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("argv", "message"), [
    (["run-figure", "reorder", "--gpus", "abc", "--dry-run"], "GPU indices or UUIDs"),
    (["run-figure", "reorder", "--gpus", ",", "--dry-run"], "GPU indices or UUIDs"),
    (["run-figure", "reorder", "--cell-timeout", "-1", "--dry-run"], ">= 0 seconds"),
])
def test_runner_rejects_bad_options(argv: list[str], message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_runner_accepts_gpu_ids_and_uuids(tmp_path: Path) -> None:
    for gpus in ("0,1", "GPU-8f1c2d3e-aaaa-bbbb-cccc-0123456789ab"):
        assert cli.main(["run-figure", "reorder", "--gpus", gpus, "--dry-run", "--out",
                         str(tmp_path), "--cells", "VisionLongformer-512-rcm"]) == 0


@pytest.mark.parametrize(("doc", "message"), [
    ("[1, 2]", "top level"),
    ('{"claims": [3]}', "must be an object"),
    ('{"claims": [{"id": "x", "figure": "attn", "metric": "m"}]}', "has no 'per' field"),
])
def test_check_rejects_malformed_claims(tmp_path: Path, doc: str, message: str) -> None:
    path = tmp_path / "claims.json"
    path.write_text(doc)
    with pytest.raises(SparseVitError, match=message):
        check.load_claims(path)


def test_check_needs_both_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["check", "--results", str(REPO / "backup_logs"), "--backup",
                     str(tmp_path / "nowhere")])
    assert code == 2 and "backup directory" in capsys.readouterr().err


def test_mask_with_nan_is_refused(tmp_path: Path) -> None:
    from sparsevit import masks

    bad = np.eye(4)
    bad[1, 2] = np.nan
    np.save(tmp_path / "m.npy", bad)
    with pytest.raises(SparseVitError, match="NaN"):
        masks.load(tmp_path / "m.npy")
    np.save(tmp_path / "ok.npy", np.eye(4) * 0.5)  # any finite nonzero is attended
    assert masks.load(tmp_path / "ok.npy").nnz == 4


def test_schedule_of_a_user_mask_needs_no_grid(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "m.npy", np.eye(128, dtype=bool))
    profile = str(REPO / "tests" / "fixtures" / "profile_h200.json")
    assert cli.main(["schedule", "--input", str(tmp_path / "m.npy"), "--profile", profile]) == 0
    assert cli.main(["schedule", "--input", str(tmp_path / "m.npy"), "--profile", profile,
                     "--time-limit", "0"]) == 2
    assert "--time-limit must be positive" in capsys.readouterr().err
