"""Shared fixtures: data location (DATA_DIR), the real base model, one live service per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.harness import ServerProcess, free_port  # noqa: F401  (free_port: for the bench tests)

REPO = Path(__file__).resolve().parent.parent
BASE_MODEL = REPO / "models" / "smollm2-135m"
DEFAULT_CVSS = REPO / "artifacts" / "cvss-default"
DEFAULT_ATTACK = REPO / "artifacts" / "attack-default"


def _data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")).resolve()


def need(path: Path, what: str) -> Path:
    """Skip when data is absent (a user's fresh clone); fail instead when CI requires it."""
    if not path.exists():
        msg = f"{what} not found at {path} (set DATA_DIR)"
        if os.environ.get("SECCLF_REQUIRE_DATA") == "1":
            pytest.fail(msg + "; SECCLF_REQUIRE_DATA=1 makes this a failure")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def cti_vsp() -> Path:
    return need(_data_dir() / "cti-vsp" / "cti-vsp.tsv", "CTI-VSP")


@pytest.fixture(scope="session")
def cti_hal() -> Path:
    return need(_data_dir() / "cti-hal" / "data", "CTI-HAL")


@pytest.fixture(scope="session")
def base_model() -> Path:
    if not (BASE_MODEL / "model.safetensors").exists():
        pytest.fail(f"{BASE_MODEL} missing: run `make setup`")
    return BASE_MODEL


def run_module(module: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m module args...` in the repo, output captured (the CLIs as a user runs them)."""
    full_env = {**os.environ, "SECCLF_NO_PROGRESS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=1800
    )


@pytest.fixture(scope="session")
def service(tmp_path_factory, base_model) -> ServerProcess:
    """The real service (vLLM CPU engine + committed default artifacts), one per test session."""
    server = ServerProcess.service({}, tmp_path_factory.mktemp("svc") / "service.log")
    try:
        server.wait_ready(420)
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(service) -> httpx.Client:
    with httpx.Client(base_url=service.url, timeout=300) as c:
        yield c
