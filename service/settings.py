"""All service settings in one place: environment variables prefixed `SECCLF_` (plus plain HOST/PORT)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_ITEMS = 64  # texts or records per request


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SECCLF_", env_file=None, extra="ignore")

    host: str = Field("0.0.0.0", validation_alias=AliasChoices("HOST", "SECCLF_HOST"))
    port: int = Field(8000, validation_alias=AliasChoices("PORT", "SECCLF_PORT"))

    # Artifacts (folders written by `python -m training`); an empty path disables that route.
    cvss_artifact: Path | None = REPO_ROOT / "artifacts" / "cvss-default"
    attack_artifact: Path | None = REPO_ROOT / "artifacts" / "attack-default"
    cvss_extra_adapters: dict[str, Path] = Field(
        default_factory=dict, description='More CVSS LoRA artifacts on the same base, JSON: {"name": "path"}'
    )
    base_model: str | None = Field(None, description="Override the manifests' base model (folder or HF id)")
    base_model_revision: str | None = Field(
        None, description="Hub commit or tag to load a hub-id base at (else the manifest's; local folders are hashed)"
    )

    # vLLM engines: one generation engine (CVSS) and one pooling engine (ATT&CK), same settings unless named
    vllm_dtype: str = Field("auto", description="auto: bfloat16 on a GPU, float32 on a CPU (2.9x faster on AVX2)")
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.85
    cvss_kv_cache_gib: float = Field(
        2.0,
        description="KV cache of the CVSS engine (GiB; CPU RAM or GPU memory). 2 GiB holds ~45k tokens "
        "of SmolLM2-135M, or ~16k of an 8B Llama in bf16",
    )
    attack_kv_cache_gib: float = Field(
        1.0, description="KV cache of the ATT&CK pooling engine (GiB): only the prompts being scored live there"
    )
    max_lora_rank: int = 16
    max_num_seqs: int = 64
    enforce_eager: bool = Field(
        True,
        description="The service's engines run eagerly: on a 2-core CPU torch.compile costs ~10 s more start-up "
        "with a warm compile cache and ~70 s without one (the batch command compiles: batch_compile)",
    )
    batch_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="The batch command's engines: compiled by torch.compile (Inductor; +14 % CVSS throughput on "
        "a 2-core CPU) or eager as the service. auto: compiled for a run of at least 400 texts, where the longer "
        "start-up pays back, when a C++ compiler is there",
    )
    tensor_parallel_size: int = 1
    cvss_merge_adapter: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Fold the CVSS adapter into the base weights (cached in cache_dir). auto: on a CPU with a "
        "single adapter, where vLLM's LoRA path costs ~3x; extra adapters keep multi-LoRA serving",
    )
    cpu_threads_bind: str = Field(
        "auto",
        description="VLLM_CPU_OMP_THREADS_BIND. auto: every core on machines with <= 4 cores (vLLM's own "
        "auto keeps one core for its scheduler: half of a 2-core machine), vLLM's auto above that",
    )
    engine_fork_server: bool = Field(
        True,
        description="CPU: fork the engine processes from a server that imports vLLM at launch, beside the main "
        "process (about 10 s less of cold start on 2 cores); off: vLLM spawns them",
    )
    cache_dir: Path = Field(
        REPO_ROOT / "models" / "cache", description="Folded models and capacity measurements (safe to delete)"
    )

    # Input limits (the request schemas take MAX_ITEMS from here)
    max_text_chars: int = Field(20_000, description="Characters per text (422 above)")
    max_body_bytes: int | None = Field(
        None,
        description="Request body bytes (413 above). Unset: room for MAX_ITEMS texts of max_text_chars in UTF-8 "
        "(4 bytes a character at most) plus 64 KiB, so every request within the per-item limits is accepted",
    )

    # Whole reports (POST /classify/attack/report, python -m service.report)
    report_max_bytes: int = Field(20 * 1024 * 1024, description="A report's upload or JSON body, bytes (413 above)")
    report_max_pages: int = Field(500, description="PDF pages (413 above)")
    report_max_segments: int = Field(
        2000, description="Sentences classified per report; past it the rest is left out and truncated is true"
    )
    report_extract_timeout_s: float = Field(20.0, description="PDF and HTML text extraction time (422 past it)")
    report_extract_memory_mib: int = Field(
        1024, description="Address space of the extraction process (a decompression bomb fails there, 422)"
    )

    # Connection hygiene in the server itself (the reverse proxy in front should enforce the same: docker/nginx)
    http_header_timeout_s: float = Field(10.0, description="A request's line and headers must arrive within this (408)")
    http_body_timeout_s: float = Field(30.0, description="A request's body must arrive within this (408)")
    http_max_header_bytes: int = Field(64 * 1024, description="Request line and headers, bytes (431 above)")
    http_max_headers: int = Field(100, description="Header fields per request (431 above)")
    http_keep_alive_s: float = Field(5.0, description="Idle keep-alive connections are closed after this")
    http_limit_concurrency: int = Field(
        1024, description="Open connections plus tasks before the server answers 503 without reading the request"
    )

    warmup: bool = True
    capacity_cache: bool = Field(
        True,
        description="Reuse an earlier start's capacity measurement (same model, engine settings and machine; "
        "kept in cache_dir/capacity) instead of timing the probe texts again; false measures at every start",
    )
    warmup_timeout_s: float = Field(600.0, description="Start-up fails (exit 3) if the warm-up request takes longer")
    drain_timeout_s: float = Field(
        150.0, description="On SIGTERM, in-flight requests get this long to finish (above the request deadline)"
    )

    # Security and reliability
    api_keys: str = Field("", description="Comma-separated bearer keys; empty disables auth (logged at start-up)")
    key_max_concurrency: int = Field(
        16, ge=1, description="Requests one API key may have in flight; over it a 429 with Retry-After"
    )
    key_concurrency_overrides: dict[str, int] = Field(
        default_factory=dict,
        description='Per-key limits, JSON {"<fingerprint>": n}; a fingerprint is the first 12 hex digits of the '
        "key's sha256 (printf %s KEY | sha256sum | cut -c1-12), so no key is written twice",
    )
    protect_ops_endpoints: bool = Field(False, description="Also require a key for /healthz, /readyz, /metrics")
    metrics_require_key: bool = Field(
        True, description="/metrics needs a bearer key whenever keys are configured (it shows what clients classify)"
    )
    metrics_port: int | None = Field(
        None,
        description="Serve /metrics on this port instead (no key; keep it private to the scraper), and not on PORT",
    )
    docs: Literal["auto", "on", "off"] = Field(
        "auto", description="/docs, /redoc and /openapi.json. auto: on only while auth is disabled (development)"
    )
    vllm_log_level: str = Field(
        "WARNING", description="vLLM's own log level (its INFO lines print engine configs with server paths)"
    )
    cors_origins: str = Field("", description="Comma-separated allowed origins; empty: CORS off")
    max_inflight_cvss: int | None = Field(
        None,
        description="Also cap CVSS texts in flight at this (503 + Retry-After above). Unset: admission by "
        "measured capacity alone (admission_share)",
    )
    max_inflight_attack: int | None = Field(None, description="Also cap ATT&CK texts in flight at this")
    admission_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Admit requests while the engine work in flight (measured per text at start-up, summed over "
        "both engines, which share the device) fits in this share of the request deadline",
    )
    request_timeout_s: float = Field(120.0, description="Per-request deadline; past it the answer is 504")
    unhealthy_exit_s: float = Field(15.0, description="Exit 4 after a model stays unhealthy this long")
    log_text: bool = Field(False, description="Log request texts (off: never logged)")

    @field_validator("cvss_artifact", "attack_artifact", mode="before")
    @classmethod
    def _empty_disables(cls, v):
        return None if v is None or (isinstance(v, str) and not v.strip()) else v

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def body_limit_bytes(self) -> int:
        return self.max_body_bytes or MAX_ITEMS * self.max_text_chars * 4 + 64 * 1024

    @property
    def report_body_limit_bytes(self) -> int:
        """The report route's body: the document plus room for multipart headers or JSON escaping."""
        return 2 * self.report_max_bytes + 64 * 1024

    @property
    def docs_enabled(self) -> bool:
        return self.docs == "on" or (self.docs == "auto" and not self.api_key_list)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
