"""The files of an artifact folder (and of a folded checkpoint), one constant each."""

from __future__ import annotations

MANIFEST_FILE = "manifest.json"
SPLIT_FILE = "split.json"  # which rows trained, validated and calibrated the model
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"  # the ATT&CK classification head
REPORT_DIR = "report"  # evaluation output: not hashed, may be regenerated
FOLD_STAMP = "secclf-folded.json"  # in a folded checkpoint: the inputs it was built from
# Never loaded: formats that can run code when unpickled
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
