"""Shared fixtures: data location (DATA_DIR), the real base model, one live service per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **env}
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 420) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"service not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def service(tmp_path_factory, base_model) -> Server:
    """The real service (vLLM CPU engine + committed default artifacts), one per test session."""
    server = Server({"SECCLF_BATCH_MAX_WAIT_MS": "20"}, tmp_path_factory.mktemp("svc") / "service.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(service) -> httpx.Client:
    with httpx.Client(base_url=service.url, timeout=300) as c:
        yield c
