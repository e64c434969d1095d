"""The one helper that runs a server process on loopback, shared by the tests and the benchmarks: start,
wait for readiness, track resident memory (with the vLLM engine processes), stop with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    """The device in words, file-name safe: GPU name, else CPU model and core count."""
    try:
        import torch

        if torch.cuda.is_available():
            return file_safe(torch.cuda.get_device_name(0))
    except Exception:
        pass
    from service.capacity_cache import cpu_model

    return f"cpu-{file_safe(cpu_model())}-{psutil.cpu_count()}c"


def file_safe(name: str) -> str:
    """A device name as one plain file-name part: trademark marks dropped, words joined by '-'
    ("Intel(R) Xeon(R) Processor" -> "Intel-Xeon-Processor")."""
    return "-".join(re.findall(r"[A-Za-z0-9_.]+", re.sub(r"\((?:R|TM)\)", " ", name, flags=re.IGNORECASE)))


class ServerProcess:
    """`args` run with this interpreter (`python -m ...`) in `cwd`, listening on `port` (HOST/PORT set)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        port: int | None = None,
        cwd: Path = REPO,
        ready_path: str = "/readyz",
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.log_path = log_path
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **(env or {})}
        self.log = log_path.open("w") if log_path else subprocess.DEVNULL
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=full_env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.peak_rss = 0

    @classmethod
    def service(cls, env: dict[str, str] | None = None, log_path: Path | None = None, **kw) -> ServerProcess:
        """This repository's service (`python -m service`)."""
        return cls(["-m", "service"], env, log_path, **kw)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text()[-n:] if self.log_path else "(no log kept)"

    def wait_ready(self, timeout: float = 600) -> float:
        """Seconds from start until `ready_path` answers 200; raises with the log's tail otherwise."""
        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return time.perf_counter() - self.t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # cold starts are reported to the tenth of a second
        raise TimeoutError(f"not ready in {timeout}s:\n{self.log_tail()}")

    def rss(self) -> int:
        """Resident memory of the process and its children (the engine processes); tracks the peak."""
        p = psutil.Process(self.proc.pid)
        total = 0
        for q in [p, *p.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):  # an engine process may just have exited
                total += q.memory_info().rss
        self.peak_rss = max(self.peak_rss, total)
        return total

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_path:
            self.log.close()
        return self.proc.returncode
