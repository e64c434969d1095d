"""The files of an artifact folder (and of a folded checkpoint), one constant each."""

from __future__ import annotations

from pathlib import Path

MANIFEST_FILE = "manifest.json"
SPLIT_FILE = "split.json"  # which rows trained, validated and calibrated the model
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"  # the ATT&CK classification head
# Out-of-sample logits (ATT&CK: out-of-fold per held-out group) with their targets: what the
# temperature and the conformal thresholds were fitted on, kept so both can be refitted and audited.
HELDOUT_FILE = "heldout_logits.safetensors"
REPORT_DIR = "report"  # evaluation output: not hashed, may be regenerated
CARD_FILE = "README.md"  # the model card, written from the manifest: not hashed, may be regenerated
FOLD_STAMP = "secclf-folded.json"  # in a folded checkpoint: the inputs it was built from
# Never loaded: formats that can run code when unpickled
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}


def readable_by_all(folder: Path) -> None:
    """0755 folders, 0644 files: mkdtemp makes folders private and safetensors writes 0600 files, yet a
    service running as another user (the image's uid 10001) must read base models, artifacts and folds."""
    folder = Path(folder)
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
