# GPU image: the official vLLM image (CUDA, torch and vllm pinned by its tag) + this project.
# Build: docker build -t secclf:gpu .
# Run:   docker run --gpus all --shm-size 2g -p 127.0.0.1:8000:8000 -e SECCLF_API_KEYS=... secclf:gpu
# VLLM_VERSION is the gpu extra's pin in pyproject.toml (tests/test_deploy.py checks they agree).
ARG VLLM_VERSION=0.32.0
FROM vllm/vllm-openai:v${VLLM_VERSION}
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf-cache \
    HOST=0.0.0.0 \
    PORT=8000 \
    SECCLF_CACHE_DIR=/data/cache \
    SECCLF_CVSS_ARTIFACT=/app/artifacts/cvss-default \
    SECCLF_ATTACK_ARTIFACT=/app/artifacts/attack-default

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY artifacts ./artifacts
# Serving's dependencies (pyproject's, not the train extra), constrained to what the image already has:
# torch, vllm and transformers are never reinstalled or changed.
# hadolint ignore=DL3013
RUN pip freeze > /tmp/image-packages.txt \
 && pip install --constraint /tmp/image-packages.txt . \
 && rm /tmp/image-packages.txt \
 && useradd --create-home --uid 10001 secclf \
 && mkdir -p /data/hf-cache /data/cache \
 && chown -R secclf:secclf /data

USER 10001
VOLUME ["/data/hf-cache", "/data/cache"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Default GPU model: set SECCLF_BASE_MODEL and the artifact paths to Foundation-Sec-8B adapters.
ENTRYPOINT ["python", "-m", "service"]
