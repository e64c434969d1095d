# GPU image: the official vLLM image (CUDA, torch and vllm pinned by its tag) + this project.
# Build: docker build -t secclf:gpu .      Run: docker run --gpus all -p 8000:8000 secclf:gpu
FROM vllm/vllm-openai:v0.11.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/data/hf-cache \
    HOST=0.0.0.0 \
    PORT=8000 \
    SECCLF_CVSS_ARTIFACT=/app/artifacts/cvss-default \
    SECCLF_ATTACK_ARTIFACT=/app/artifacts/attack-default

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY artifacts ./artifacts
# The vllm image already carries torch/transformers/vllm; install what serving needs (pyproject's
# dependencies, not the train extra) without touching them.
RUN pip install --no-deps . \
 && pip install "fastapi>=0.115" "uvicorn[standard]>=0.30" "pydantic-settings>=2.3" "prometheus-client>=0.20" \
        "peft>=0.13" "cvss>=3.1" "python-json-logger>=2.0" \
 && useradd --create-home --uid 10001 secclf \
 && mkdir -p /data/hf-cache /app/models \
 && chown -R secclf:secclf /data /app

USER 10001
VOLUME ["/data/hf-cache", "/app/artifacts"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Default GPU model: set SECCLF_BASE_MODEL and the artifact paths to Foundation-Sec-8B adapters.
ENTRYPOINT ["python", "-m", "service"]
