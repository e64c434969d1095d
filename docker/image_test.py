"""`make image-test`: build the CPU image, serve from it, probe it, stop it; then compose it with nginx and Prometheus.

Writes docker/image-test.json: image size, build time, time to ready, peak memory, each check's result.
Needs podman (or docker: SECCLF_CONTAINER_ENGINE=docker) and, where the base images cannot be pulled,
debootstrap, to make local stand-ins (Debian bookworm + Python 3.11 for the Dockerfile's `FROM`; Debian's
`prometheus` and `nginx-light` packages for compose). The machine's pip indexes are passed as build arguments, so the
Dockerfile stays generic. Not part of `.ci/run` (it takes many minutes); see the README.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docker" / "image-test.json"
ENGINE = os.environ.get("SECCLF_CONTAINER_ENGINE", "podman")
IMAGE = "localhost/secclf:cpu"
KEY = "image-test-key"
DEBIAN_MIRROR = os.environ.get("SECCLF_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CVE = (
    "A SQL injection vulnerability in the login form of Acme Portal 2.3 allows remote unauthenticated "
    "attackers to execute arbitrary SQL commands via the username parameter."
)
PROMETHEUS_QUERY_URL = "http://127.0.0.1:9090/api/v1/query"
P95_BY_ROUTE = "histogram_quantile(0.95, sum by (le, route) (rate(secclf_request_duration_seconds_bucket[5m])))"
REPORT = "The actor used Mimikatz to dump credentials from LSASS memory and moved laterally over SMB."


def sh(*cmd: str, check: bool = True, timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, check=check, text=True, timeout=timeout, **kw)


def engine(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh(ENGINE, *args, **kw)


def image_exists(name: str) -> bool:
    return engine("image", "exists", name, check=False).returncode == 0


def from_image(dockerfile: Path) -> str:
    text = dockerfile.read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    return default.group(1) if default else re.search(r"^FROM (\S+)", text, re.M).group(1)


# -- local stand-ins for base images that cannot be pulled ------------------------------------------------
def debian_rootfs_image(name: str = "localhost/debian-python:bookworm-nginx") -> str:
    """Debian bookworm (minbase) + Python 3.11 with its headers (as the official python images have: torch
    inductor compiles against them) + pip, with this machine's CA bundle (a test base only)."""
    if image_exists(name):
        return name
    root = Path(tempfile.mkdtemp(prefix="secclf-rootfs-"))
    try:
        sh(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-dev,python3-pip,python3-venv,ca-certificates,prometheus,nginx-light,wget",
            "bookworm",
            str(root),
            DEBIAN_MIRROR,
        )
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)  # pip installs system-wide
        for tool, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
            link = root / "usr/local/bin" / tool
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        sh(ENGINE, "import", "--change", 'CMD ["/bin/bash"]', "-", name, stdin=tar.stdout)
        tar.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return name


def ensure_base(name: str, checks: dict) -> None:
    """Pull `name`; where no registry answers, tag the local Debian + Python stand-in with it."""
    if image_exists(name):
        return
    try:
        if engine("pull", name, check=False, timeout=90).returncode == 0:
            checks["base_image"] = f"pulled {name}"
            return
    except subprocess.TimeoutExpired:
        pass
    engine("tag", debian_rootfs_image(), name)
    checks["base_image"] = f"{name}: local stand-in (Debian bookworm + Python 3.11 via debootstrap)"


def prometheus_image(name: str) -> None:
    """Compose's Prometheus: a stand-in from Debian's package where the official image cannot be pulled."""
    if image_exists(name):
        return
    base = debian_rootfs_image()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "Containerfile").write_text(
            f"FROM {base}\nRUN mkdir -p /prometheus && chown nobody /prometheus\nUSER nobody\nWORKDIR /prometheus\n"
            'ENTRYPOINT ["/usr/bin/prometheus", "--storage.tsdb.path=/prometheus"]\n'
        )
        engine("build", "--pull=never", "-t", name, d)


def nginx_image(name: str) -> None:
    """Compose's proxy: a stand-in from Debian's nginx where the official image cannot be pulled (the
    configuration is the one compose mounts, docker/nginx/nginx.conf)."""
    if image_exists(name):
        return
    base = debian_rootfs_image()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "Containerfile").write_text(f'FROM {base}\nENTRYPOINT ["/usr/sbin/nginx", "-g", "daemon off;"]\n')
        engine("build", "--pull=never", "-t", name, d)


# -- build ----------------------------------------------------------------------------------------------
def pip_build_args() -> tuple[list[str], list[str]]:
    """This machine's pip indexes and find-links as build arguments (+ read-only mounts for file:// ones)."""
    cfg = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    values = dict(re.findall(r"^\S+\.([\w-]+)='(.*)'$", cfg, re.M))
    extra = os.environ.get("PIP_EXTRA_INDEX_URL") or values.get("extra-index-url", "")
    links = os.environ.get("PIP_FIND_LINKS") or values.get("find-links", "")
    args, mounts = [], []
    if extra:
        args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={extra}"]
    if links:
        args += ["--build-arg", f"PIP_FIND_LINKS={links}"]
    for item in (extra + " " + links).split():
        path = item.removeprefix("file://")
        if path.startswith("/"):
            top = "/" + path.strip("/").split("/")[0] + "/" + path.strip("/").split("/")[1]
            if Path(top).exists() and f"{top}:{top}:ro" not in mounts:
                mounts += ["-v", f"{top}:{top}:ro"]
    return args, mounts


def build(checks: dict, no_cache: bool) -> float:
    dockerfile = REPO / "docker" / "Dockerfile.cpu"
    ensure_base(from_image(dockerfile), checks)
    args, mounts = pip_build_args()
    t0 = time.time()
    cache = ["--no-cache"] if no_cache else []
    engine(
        "build",
        "--format=docker",  # the OCI format drops HEALTHCHECK, which this test runs
        "--pull=never",
        "--network",
        "host",
        *cache,
        *args,
        *mounts,
        "-f",
        str(dockerfile),
        "-t",
        IMAGE,
        str(REPO),
    )
    return time.time() - t0


# -- run and probe ----------------------------------------------------------------------------------------
class MemorySampler(threading.Thread):
    def __init__(self, container: str) -> None:
        super().__init__(daemon=True)
        self.container, self.peak, self.stop = container, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            r = subprocess.run(
                [ENGINE, "stats", "--no-stream", "--format", "{{.MemUsage}}", self.container],
                capture_output=True,
                text=True,
                check=False,
            )
            m = re.match(r"\s*([\d.]+)\s*([kMG]i?B|B)", r.stdout)
            if m:
                scale = {"B": 1, "kB": 1e3, "KiB": 1024, "MB": 1e6, "MiB": 2**20, "GB": 1e9, "GiB": 2**30}
                self.peak = max(self.peak, int(float(m.group(1)) * scale.get(m.group(2), 1)))
            self.stop.wait(1.0)


def wait_healthy(container: str, timeout_s: float) -> float:
    """Run the image's own HEALTHCHECK until it passes, then wait for /readyz; seconds from start."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        state = engine("inspect", "--format", "{{.State.Status}}", container, capture_output=True).stdout.strip()
        if state != "running":
            raise RuntimeError(f"container {state} before it was healthy")
        check = engine("healthcheck", "run", container, check=False, capture_output=True)
        if check.returncode == 0:
            return time.time() - t0
        if "no defined healthcheck" in (check.stdout + check.stderr):
            raise RuntimeError("the image has no HEALTHCHECK (built in OCI format?)")
        time.sleep(3)
    raise TimeoutError(f"not healthy within {timeout_s} s")


def probe(base: str, checks: dict) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, timeout=120) as c:
        t0 = time.time()
        while c.get("/readyz").status_code != 200:
            if time.time() - t0 > 300:
                raise TimeoutError("/readyz not 200 within 300 s")
            time.sleep(2)
        checks["readyz"] = c.get("/readyz").json()

        r = c.post("/classify/cvss", json={"description": CVE, "coverage": 0.9}, headers=auth)
        r.raise_for_status()
        body = r.json()
        from training.artifact.scoring import score_vector

        assert re.fullmatch(
            r"CVSS:3\.1/AV:[NALP]/AC:[LH]/PR:[NLH]/UI:[NR]/S:[UC]/C:[NLH]/I:[NLH]/A:[NLH]", body["vector"]
        )
        assert (body["base_score"], body["severity"]) == score_vector(body["vector"])
        for key, metric in body["metrics"].items():
            assert abs(sum(metric["probabilities"].values()) - 1) < 1e-4, key
            assert metric["prediction_set"][0] == metric["value"], key
        low, high = body["base_score_range"]
        assert low <= body["base_score"] <= high
        checks["cvss"] = {"vector": body["vector"], "base_score": body["base_score"], "range": [low, high]}

        r = c.post("/classify/attack", json={"text": REPORT, "top_k": 5, "coverage": 0.8}, headers=auth)
        r.raise_for_status()
        preds = r.json()["predictions"]
        probs = [p["probability"] for p in preds]
        assert len(preds) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(re.fullmatch(r"T\d{4}", p["technique_id"]) and p["name"] for p in preds)
        checks["attack"] = {
            "top": [(p["technique_id"], round(p["probability"], 3)) for p in preds[:3]],
            "set_size": len(r.json()["prediction_set"]),
        }

        bad = {
            "empty text": c.post("/classify/attack", json={"text": " "}, headers=auth).status_code,
            "no key": c.post("/classify/cvss", json={"description": CVE}).status_code,
            "unsupported coverage": c.post(
                "/classify/cvss", json={"description": CVE, "coverage": 0.95}, headers=auth
            ).status_code,
        }
        assert bad == {"empty text": 422, "no key": 401, "unsupported coverage": 422}, bad
        checks["bad_input"] = bad

        metrics = c.get("/metrics", headers=auth).text
        for series in ("secclf_requests_total", "secclf_request_duration_seconds_bucket", "secclf_top1_confidence"):
            assert series in metrics, series
        checks["metrics"] = "exported"


def sigterm_drain(container: str, base: str, checks: dict) -> None:
    """A batch in flight when SIGTERM arrives is still answered; the container then exits 0."""
    auth = {"Authorization": f"Bearer {KEY}"}
    result: dict = {}

    def send() -> None:
        # the largest batch a request may carry (service.schemas.MAX_ITEMS): several seconds of decoding on
        # 2 cores, so it is still running when the signal lands one second in
        with httpx.Client(base_url=base, timeout=180) as c:
            r = c.post(
                "/classify/cvss", json={"descriptions": [f"{CVE} Variant {i}." for i in range(64)]}, headers=auth
            )
            result["status"], result["done"] = r.status_code, time.monotonic()

    t = threading.Thread(target=send)
    t.start()
    time.sleep(1.0)
    signalled = time.monotonic()
    engine("kill", "--signal", "TERM", container)
    t.join(200)
    engine("wait", container, timeout=200, capture_output=True)
    code = int(engine("inspect", "--format", "{{.State.ExitCode}}", container, capture_output=True).stdout)
    logs = engine("logs", container, capture_output=True, check=False)
    drained = "Waiting for connections to close" in logs.stdout + logs.stderr  # uvicorn draining
    # answered after the signal: the batch was really in flight, so the drain, not luck, answered it
    after = result.get("done", 0.0) > signalled
    checks["sigterm"] = {
        "in_flight_status": result.get("status"),
        "answered_after_signal": after,
        "exit_code": code,
        "drain_logged": drained,
    }
    assert result.get("status") == 200 and after and code == 0, checks["sigterm"]


def run_image(checks: dict, port: int) -> dict:
    name = "secclf-image-test"
    engine("rm", "-f", name, check=False, capture_output=True)
    engine(
        "run",
        "-d",
        "--name",
        name,
        "--shm-size=2g",
        "-p",
        f"127.0.0.1:{port}:8000",
        "-e",
        f"SECCLF_API_KEYS={KEY}",
        IMAGE,
    )
    sampler = MemorySampler(name)
    sampler.start()
    out: dict = {}
    try:
        out["seconds_to_healthy"] = round(wait_healthy(name, 600), 1)
        base = f"http://127.0.0.1:{port}"
        probe(base, checks)
        sigterm_drain(name, base, checks)
    finally:
        sampler.stop.set()
        out["peak_memory_bytes"] = sampler.peak
        logs = engine("logs", name, capture_output=True, check=False)
        (REPO / "docker" / "image-test.log").write_text(logs.stdout + logs.stderr)  # not committed (.gitignore)
        engine("rm", "-f", name, check=False, capture_output=True)
    return out


# -- compose with Prometheus -----------------------------------------------------------------------------
def compose_check(checks: dict) -> None:
    """service + Prometheus (the cpu profile, Grafana left out: not packaged here); Prometheus must report
    the target up and answer a p95 latency query per route after traffic."""
    # podman-compose from the dev extras (1.5: network aliases) before a system one (Debian's 1.0.3 ignores them)
    local = Path(sys.executable).parent / "podman-compose"
    compose = (str(local) if local.exists() else shutil.which("podman-compose")) if ENGINE == "podman" else None
    cmd = [compose] if compose else [ENGINE, "compose"]
    spec = (REPO / "docker-compose.yml").read_text()
    prom = re.search(r"prometheus:\s*\n\s*image:\s*(\S+)", spec).group(1)
    prometheus_image(prom)
    nginx_image(re.search(r"proxy:\s*\n\s*image:\s*(\S+)", spec).group(1))
    env = {**os.environ, "SECCLF_API_KEYS": KEY, "GRAFANA_ADMIN_PASSWORD": "unused", "COMPOSE_PROFILES": "cpu"}
    project = ["-p", "secclf-image-test", "-f", str(REPO / "docker-compose.yml")]
    # the image is already built: tag it with the name compose expects
    engine("tag", IMAGE, "localhost/secclf:cpu", "secclf:cpu", check=False)
    profile = ["--profile", "cpu"]
    services = ["secclf-cpu", "prometheus", "proxy"]
    up = [*cmd, *project, *profile, "up", "-d", *([] if compose else ["--no-build"]), *services]
    try:
        sh(*up, env=env, cwd=REPO)
        with httpx.Client(timeout=30) as c:
            t0 = time.time()
            while time.time() - t0 < 600:
                try:
                    if c.get("http://127.0.0.1:8000/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(3)
            auth = {"Authorization": f"Bearer {KEY}"}
            targets, p95 = [], {}
            routes = {"/classify/attack", "/classify/cvss"}
            t0 = time.time()
            # traffic between scrapes (every 15 s), until rate() over two scrapes gives each route a p95
            while time.time() - t0 < 240 and not (any(t["health"] == "up" for t in targets) and routes <= set(p95)):
                c.post("http://127.0.0.1:8000/classify/attack", json={"text": REPORT}, headers=auth, timeout=120)
                c.post("http://127.0.0.1:8000/classify/cvss", json={"description": CVE}, headers=auth, timeout=120)
                time.sleep(5)
                try:
                    targets = c.get("http://127.0.0.1:9090/api/v1/targets").json()["data"]["activeTargets"]
                    result = c.get(PROMETHEUS_QUERY_URL, params={"query": P95_BY_ROUTE}).json()["data"]["result"]
                except (httpx.HTTPError, KeyError, ValueError):
                    continue
                p95 = {
                    r["metric"].get("route"): float(r["value"][1])
                    for r in result
                    if r["value"][1] not in ("NaN", "+Inf")
                }
            checks["proxy"] = proxy_check(c, auth)
        checks["compose"] = {
            "targets": {t["scrapeUrl"]: t["health"] for t in targets},
            "p95_seconds_by_route": p95,
            "grafana": "not started: no Grafana package here; its dashboard is checked statically",
        }
        assert any(t["health"] == "up" for t in targets) and routes <= set(p95), checks["compose"]
    finally:
        sh(*cmd, *project, *profile, "down", env=env, cwd=REPO, check=False)


def proxy_check(c: httpx.Client, auth: dict) -> dict:
    """Through nginx (:8080): the API answers, /metrics stays private, an oversized header or body is turned
    away at the edge."""
    proxy = "http://127.0.0.1:8080"
    out = {
        "healthz": c.get(f"{proxy}/healthz").status_code,
        "classify": c.post(f"{proxy}/classify/attack", json={"text": REPORT}, headers=auth, timeout=120).status_code,
        "metrics": c.get(f"{proxy}/metrics", headers=auth).status_code,
        "32 KB header": c.get(f"{proxy}/healthz", headers={"X-Big": "a" * 32_000}).status_code,
        "7 MB body": c.post(
            f"{proxy}/classify/attack", content=b"x" * (7 << 20), headers={**auth, "content-type": "application/json"}
        ).status_code,
    }
    assert out == {"healthz": 200, "classify": 200, "metrics": 404, "32 KB header": 400, "7 MB body": 413}, out
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--skip-build", action="store_true", help="reuse localhost/secclf:cpu")
    parser.add_argument("--skip-compose", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="build every layer (an honest build time)")
    opts = parser.parse_args()
    checks: dict = {}
    report: dict = {"engine": ENGINE, "image": IMAGE, "date": time.strftime("%Y-%m-%d"), "checks": checks}
    ok = False
    try:
        if not opts.skip_build:
            report["build_seconds"] = round(build(checks, opts.no_cache), 1)
            report["build_cache"] = "not used" if opts.no_cache else "used where layers were unchanged"
        size = engine("image", "inspect", "--format", "{{.Size}}", IMAGE, capture_output=True).stdout.strip()
        report["image_size_bytes"] = int(size)
        report.update(run_image(checks, opts.port))
        if not opts.skip_compose:
            compose_check(checks)
        ok = True
    except Exception as e:  # recorded in the report, then the exit code says it failed
        report["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        report["passed"] = ok
        OUT.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
