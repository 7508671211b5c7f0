"""make check (sparsevit.kit.check) on crafted logs: verdicts, tolerance, sentinels, bad
files; the shipped claims judged against the backup logs themselves; no torch needed;
and make env-check's table on a machine without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparsevit.errors import SparseVitError
from sparsevit.kit import check, env_check

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

CLAIM = {"id": "speed", "claim": "ours is faster", "figure": "fig", "metric": "speedup",
         "rows": {"dense": False}, "exclude_systems": ["ours"], "per": ["model", "resolution"],
         "reduce": "min", "tolerance": 0.15}


def write_log(directory: Path, model: str, res: str, system: str, **row: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = ("# sparsevit-log v1\n# device: H200\n"
            f"RESULT {json.dumps({'status': 'OK', 'dense': False, **row})}\n")
    (directory / f"fig.h200.{model}.{res}.{system}.log").write_text(text)


def crafted(tmp_path: Path) -> tuple[Path, Path]:
    backup, fresh = tmp_path / "backup" / "fig", tmp_path / "fresh" / "fig"
    # (model, res): backup baselines' speedups; the claim value is their min.
    for model, a, b in (("A", 2.0, 3.0), ("B", 2.0, 5.0), ("C", 4.0, 6.0), ("D", 1.5, 2.0),
                        ("E", 1.0, 1.0)):
        write_log(backup, model, "1", "base1", speedup=a)
        write_log(backup, model, "1", "base2", speedup=b)
        write_log(backup, model, "1", "ours", speedup=1.0)
        write_log(backup, model, "1", "densek", speedup=0.1, dense=True)
    write_log(fresh, "A", "1", "base1", speedup=2.2)  # +10%: within ±15%
    write_log(fresh, "A", "1", "base2", speedup=3.1)
    write_log(fresh, "B", "1", "base1", speedup=2.6)  # +30%: differs
    write_log(fresh, "B", "1", "base2", speedup=5.0)
    write_log(fresh, "D", "1", "base1", status="OOM", reason="x")  # a sentinel now
    write_log(fresh, "D", "1", "base2", status="OOM", reason="x")
    write_log(fresh, "E", "1", "base1", speedup=1.0)
    write_log(fresh, "E", "1", "base2", speedup=1.0)
    # C has no fresh log at all; stray and broken files must only warn.
    (fresh / "README.txt").write_text("notes")
    (fresh / "fig.h200.E.1.broken.log").write_text("RESULT {not json\n")
    (fresh / "fig.h200.E.1.binary.log").write_bytes(b"\xff\xfe\x00")
    (fresh / ".kit" / "done").mkdir(parents=True)
    return backup.parent, fresh.parent


def test_judge_verdicts_on_crafted_logs(tmp_path: Path) -> None:
    backup, fresh = crafted(tmp_path)
    claims = [check.Claim(**{**CLAIM, "per": ("model", "resolution"),
                             "exclude_systems": ("ours",)})]
    judged, = check.check(REPO, fresh, backup, claims)
    marks = {row[0]: row[-1] for row in judged.table}
    assert marks == {"A": "ok", "B": "DIFFERS", "C": "missing", "D": "DIFFERS (OOM)", "E": "ok"}
    assert judged.verdict == "differs"
    assert judged.differs == ["B/1 (1.300x)", "D/1 (OOM)"] and judged.missing == ["C/1 (NS)"]
    assert any("broken" in n for n in judged.notes)  # bad files: a note, no crash


def test_verdicts_reproduced_and_missing(tmp_path: Path) -> None:
    backup, _ = crafted(tmp_path)
    claim = check.Claim(**{**CLAIM, "per": ("model", "resolution"),
                           "exclude_systems": ("ours",)})
    same, = check.check(REPO, backup, backup, [claim])
    assert same.verdict == "reproduced" and len(same.table) == 5
    absent, = check.check(REPO, tmp_path / "nothing", backup, [claim])
    assert absent.verdict == "missing" and len(absent.missing) == 5
    nobackup, = check.check(REPO, backup, tmp_path / "nothing", [claim])
    assert nobackup.verdict == "missing" and "no backup value to compare with" in nobackup.notes


def test_check_cli_table_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backup, fresh = crafted(tmp_path)
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"claims": [CLAIM]}))
    args = ["--root", str(REPO), "--results", str(fresh), "--backup", str(backup),
            "--claims", str(claims)]
    assert check.main(args) == 1
    out = capsys.readouterr().out
    assert "verdict: DIFFERS; differs: B/1 (1.300x), D/1 (OOM); missing: C/1 (NS)" in out
    assert "1.1" in out  # A's fresh/backup ratio, 2.2 / 2.0
    assert check.main([*args[:4], "--backup", str(backup), "--results", str(backup),
                       "--claims", str(claims)]) == 0
    claims.write_text(json.dumps({"claims": [{**CLAIM, "per": ["colour"]}]}))
    assert check.main(args) == 2
    assert "'per' takes" in capsys.readouterr().err
    assert check.main([*args[:2], "--results", str(tmp_path / "none")]) == 2


def test_relative_to_divides_by_the_sibling_log_as_it_stands(tmp_path: Path) -> None:
    # The baseline's logged ratio (4.0) is stale: sparsevit's log was rerun since.
    logs = tmp_path / "fig"
    write_log(logs, "A", "1", "full-b1-eager", backend="full", median_us=30.0, speedup=4.0)
    write_log(logs, "A", "1", "sparsevit-b1-eager", backend="sparsevit", median_us=10.0)
    write_log(logs, "A", "2", "full-b1-eager", backend="full", median_us=60.0)
    write_log(logs, "A", "2", "sparsevit-b1-eager", backend="sparsevit", median_us=40.0)
    write_log(logs, "A", "1", "full-b8-eager", backend="full", median_us=80.0)
    write_log(logs, "A", "1", "sparsevit-b8-eager", backend="sparsevit", status="OOM")
    write_log(logs, "B", "1", "full-b1-eager", backend="full", median_us=5.0)
    # A log name that only starts with the backend's name is not its sibling's.
    write_log(logs, "C", "1", "fullx-b1-eager", backend="full", median_us=5.0)
    write_log(logs, "C", "1", "sparsevitx-b1-eager", backend="sparsevit", median_us=1.0)
    claim = check.Claim(id="x", claim="x", figure="fig", metric="median_us", tolerance=0.1,
                        per=("model", "resolution", "system"), rows={"backend": "full"},
                        relative_to="sparsevit")
    parser = check.load_plot_logs(REPO)
    values = check.claim_values(parser, parser.load_dir(logs, figure="fig"), "h200", claim)
    assert values == {("A", "1", "full-b1-eager"): 3.0, ("A", "2", "full-b1-eager"): 1.5,
                      ("A", "1", "full-b8-eager"): "OOM", ("B", "1", "full-b1-eager"): "NS",
                      ("C", "1", "fullx-b1-eager"): "NS"}
    claim.only = {"resolution": ["2"]}  # only: a name-part allowlist
    only = check.claim_values(parser, parser.load_dir(logs, figure="fig"), "h200", claim)
    assert only == {("A", "2", "full-b1-eager"): 1.5}


def test_relative_to_on_attn_names_and_failures_before_ns(tmp_path: Path) -> None:
    # attn logs are named by the backend alone; a group's min spans its baselines. A
    # fresh sparsevit failure must read as that failure, not as NS from a dense kernel
    # that was not installed (flash_attn sorts first).
    logs = tmp_path / "fig"
    for res, ours in (("1", {"median_us": 20.0}), ("2", {"status": "FAIL"})):
        write_log(logs, "M", res, "flash_attn", backend="flash_attn", status="NS")
        write_log(logs, "M", res, "flex_b64", backend="flex_b64", median_us=100.0)
        write_log(logs, "M", res, "naive", backend="naive", median_us=60.0)
        write_log(logs, "M", res, "sparsevit", backend="sparsevit", **ours)
    claim = check.Claim(id="x", claim="x", figure="fig", metric="median_us", tolerance=0.1,
                        per=("model", "resolution"), reduce="min", relative_to="sparsevit",
                        exclude_systems=("sparsevit",))
    parser = check.load_plot_logs(REPO)
    values = check.claim_values(parser, parser.load_dir(logs, figure="fig"), "h200", claim)
    assert values == {("M", "1"): 3.0, ("M", "2"): "FAIL"}


def test_relative_to_and_only_are_validated(tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"claims": [{**CLAIM, "relative_to": ""}]}))
    with pytest.raises(SparseVitError, match="relative_to"):
        check.load_claims(claims)
    claims.write_text(json.dumps({"claims": [{**CLAIM, "only": {"colour": ["red"]}}]}))
    with pytest.raises(SparseVitError, match="'only'"):
        check.load_claims(claims)


def test_shipped_claims_reproduce_on_the_backup_logs_themselves() -> None:
    claims = check.load_claims(REPO / "ae" / "claims.json")
    figures = {p.parent.name for p in (REPO / "ae").glob("*/cells.sh")}
    assert {c.figure for c in claims} <= figures
    judged = check.check(REPO, REPO / "backup_logs", REPO / "backup_logs", claims)
    for j in judged:
        assert j.table, f"claim {j.claim.id} matches no backup value"
        assert j.verdict == "reproduced", (j.claim.id, j.differs, j.missing)


def test_check_runs_without_torch(tmp_path: Path) -> None:
    code = ("import sys, sparsevit.kit.check as c; rc = c.main(['--results', 'backup_logs']); "
            "assert 'torch' not in sys.modules and 'scipy' not in sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(SRC)}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "reproduced" in proc.stdout


def test_env_check_table_without_a_gpu(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env_check, "gpus", lambda: [])
    assert env_check.main([]) == 1
    out = capsys.readouterr().out
    for component in ("GPU", "driver", "torch", "triton", "flash-attn", "Gurobi", "HiGHS"):
        assert any(line.startswith(component) for line in out.splitlines()), component
    assert "not ready for the GPU run: GPU" in out


def test_env_check_flags_a_driver_too_old_for_torchs_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    rows = {r[0]: r for r in env_check.rows_torch("470.82")}
    assert rows["CUDA (torch)"][2] == "ERROR" and "too old" in rows["CUDA (torch)"][3]
    rows = {r[0]: r for r in env_check.rows_torch("550.54")}
    assert rows["CUDA (torch)"][2] == "ok"


def test_gurobi_licence_probe_reads_the_error_numbers() -> None:
    class GurobiError(Exception):
        def __init__(self, errno: int) -> None:
            self.errno = errno

    def fake(errno: int | None) -> SimpleNamespace:
        class Model:
            def __init__(self, env: object) -> None: ...
            def addVars(self, n: int, ub: float) -> SimpleNamespace:  # noqa: N802
                return SimpleNamespace(sum=lambda: 0)
            def setObjective(self, expr: object) -> None: ...  # noqa: N802
            def optimize(self) -> None:
                if errno is not None:
                    raise GurobiError(errno)
            def dispose(self) -> None: ...

        class Env:
            def __init__(self, empty: bool) -> None: ...
            def setParam(self, k: str, v: object) -> None: ...  # noqa: N802
            def start(self) -> None: ...
            def dispose(self) -> None: ...

        return SimpleNamespace(Env=Env, Model=Model, GurobiError=GurobiError,
                               GRB=SimpleNamespace(Error=SimpleNamespace(
                                   SIZE_LIMIT_EXCEEDED=10010, NO_LICENSE=10009)))

    assert env_check.gurobi_licence(fake(None)) == ("ok", "full licence")
    assert "size-limited" in env_check.gurobi_licence(fake(10010))[1]
    assert "expired" in env_check.gurobi_licence(fake(10009))[1]
