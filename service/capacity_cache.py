"""The start-up capacity measurement (engine seconds per longest text, service/admission.py), kept across
starts: a restart with the same model, engine settings and machine reuses it instead of timing the probes
again (about 8 s of a 2-core cold start). Anything that changes the work per text changes the key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from training.artifact.atomic_write import write_text_atomic

log = logging.getLogger(__name__)
FOLDER = "capacity"


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the measured seconds depend on outside the model: processor, usable cores, accelerator."""
    out: dict[str, Any] = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0))}
    for var in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        out[var] = os.environ.get(var)
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return out


def key_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def load(cache_dir: Path, identity: dict[str, Any]) -> float | None:
    """The cached seconds per text for this identity, or None (absent, unreadable or not positive)."""
    path = Path(cache_dir) / FOLDER / f"{key_of(identity)}.json"
    try:
        record = json.loads(path.read_text())
        seconds = float(record["seconds_per_text"])
        if record.get("identity") != json.loads(json.dumps(identity, default=str)) or not seconds > 0:
            return None
        return seconds
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable capacity record %s: %s", path.name, e)
        return None


def store(cache_dir: Path, identity: dict[str, Any], seconds_per_text: float) -> None:
    """Best effort: a read-only cache only costs the next start its measurement."""
    folder = Path(cache_dir) / FOLDER
    record = {"identity": identity, "seconds_per_text": seconds_per_text}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / f"{key_of(identity)}.json", json.dumps(record, indent=2, default=str) + "\n")
    except OSError as e:
        log.warning("capacity measurement not cached (%s): the next start measures again", e)
