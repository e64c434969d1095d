"""The fork server that engine processes start from (service/fork_server.py): light to import (it must start
before the heavy imports it overlaps), and its children run with their parent's environment as it was when
each child was created, as a spawned child would, not the fork server's environment from launch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import REPO

HEAVY = {"uvicorn", "fastapi", "torch", "transformers", "vllm", "service.app"}


def test_fork_server_module_and_settings_import_nothing_heavy():
    code = "import json, sys; import service.fork_server, service.settings; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    heavy = HEAVY & set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert not heavy, f"imported before the fork server starts: {sorted(heavy)}"


def test_child_gets_the_parents_environment_at_creation_not_the_servers(tmp_path):
    (tmp_path / "probe.py").write_text(
        "import os, sys\ndef check(name, want):\n    sys.exit(0 if os.environ.get(name) == want else 3)\n"
    )
    code = textwrap.dedent(
        f"""
        import multiprocessing.forkserver, os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import probe
        from service import fork_server
        fork_server.CONTEXT.set_forkserver_preload([])  # no vLLM here: the environment is the point
        multiprocessing.forkserver.ensure_running()
        assert fork_server.running()
        os.environ["SECCLF_PROBE"] = "set after the server started"
        os.environ.pop("HOME", None)  # removed after: gone in the child too
        codes = []
        for name, want in [("SECCLF_PROBE", "set after the server started"), ("HOME", None)]:
            p = fork_server.CONTEXT.Process(target=probe.check, args=(name, want))
            p.start()
            p.join(60)
            codes.append(p.exitcode)
        print(codes)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": "/tmp", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[0, 0]"
