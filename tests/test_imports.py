"""Serving never loads training-only code: importing the app in a fresh interpreter pulls in none of the
training stack (the serving image need not install it)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

TRAINING_ONLY = ("sklearn", "matplotlib", "scipy", "typer", "gguf", "transformers.trainer")


def test_service_app_imports_no_training_stack():
    code = "import json, sys; import service.app, service.__main__; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert "service.app" in loaded and "training.artifact.manifest" in loaded  # the contract is shared
    training = sorted(m for m in loaded if m.startswith("training.") and not m.startswith("training.artifact"))
    assert not training, f"serving imports training modules outside the contract subpackage: {training}"
    bad = sorted(m for m in loaded if any(m == b or m.startswith(b + ".") for b in TRAINING_ONLY))
    assert not bad, f"serving imports training-only modules: {bad}"


def test_service_main_module_is_light_for_spawned_engine_processes():
    """vLLM spawns each engine process, and a spawned child imports the parent's __main__ module before
    anything else: `python -m service`'s module must not pull in the web stack or torch at import."""
    code = "import json, sys; import service.__main__; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    heavy = {"uvicorn", "fastapi", "torch", "transformers", "vllm", "service.app"} & loaded
    assert not heavy, f"service/__main__.py imports {sorted(heavy)} at module level"
