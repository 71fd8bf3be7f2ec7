"""create_app(settings): the engine, the services over it, and the routers."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from glassbox import __version__, tracing
from glassbox.api.admin import routes as admin_routes
from glassbox.api.deps import require_key
from glassbox.api.embeddings import jobs as job_routes
from glassbox.api.embeddings import routes as embedding_routes
from glassbox.api.ember import routes as ember_routes
from glassbox.api.ember.adapter import EmberService
from glassbox.api.errors import ERROR_RESPONSES, install_error_handlers
from glassbox.api.features import routes as feature_routes
from glassbox.api.features import variants as variant_routes
from glassbox.api.limits import RateLimits, enforce_limits
from glassbox.api.middleware import (
    REQUEST_ID_HEADER,
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
    StrictJSONMiddleware,
)
from glassbox.api.openai import routes as openai_routes
from glassbox.api.openai.adapter import OpenAIService
from glassbox.api.openai.relay import RelayService
from glassbox.api.page import install_page
from glassbox.api.sessions import routes as session_routes
from glassbox.api.states import analysis as analysis_routes
from glassbox.api.states import beam as beam_routes
from glassbox.api.states import routes as state_routes
from glassbox.api.system import routes as system_routes
from glassbox.api.system import tokenize as tokenize_routes
from glassbox.api.tasks import routes as task_routes
from glassbox.api.vector_stores import routes as vector_store_routes
from glassbox.auth import KeyService, load_secret
from glassbox.backends import InferenceEngine
from glassbox.config import Settings
from glassbox.embeddings.chunks import ChunkStore
from glassbox.embeddings.embedder import import_library
from glassbox.embeddings.files import FileService
from glassbox.embeddings.jobs import JobService
from glassbox.embeddings.vector_stores import VectorStoreService
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.features.service import FeatureService
from glassbox.features.steering import SteeringService
from glassbox.features.variants import VariantService
from glassbox.logs import get_logger
from glassbox.metrics import Metrics
from glassbox.models.loader import ResolvedModel
from glassbox.requests.generation import GenerationService
from glassbox.requests.registry import ModelRegistry
from glassbox.runtime import (
    build_backend,
    build_embeddings,
    request_bounds,
    resolve,
    served_models,
    start_engine,
)
from glassbox.sessions.locks import LocalLocks, RedisLocks
from glassbox.sessions.service import SessionService
from glassbox.states.analysis import StateAnalysis
from glassbox.states.service import StateService
from glassbox.store import Database
from glassbox.store.db import default_url
from glassbox.structured.grammar import GrammarCompiler
from glassbox.structured.tasks import TaskService

log = get_logger(__name__)

# Every HTTP surface, one router per module.
ROUTES = [
    openai_routes,
    tokenize_routes,
    feature_routes,
    variant_routes,
    state_routes,
    analysis_routes,
    beam_routes,
    system_routes,
    ember_routes,
    task_routes,
    session_routes,
    embedding_routes,
    job_routes,
    vector_store_routes,
    admin_routes,
]


def _build_engine(settings: Settings) -> tuple[AsyncLLMEngine, ResolvedModel]:
    t0 = time.perf_counter()
    engine, resolved = start_engine(settings)
    log.info(
        "engine ready",
        model=resolved.name,
        directory=str(resolved.directory),
        max_model_len=engine.max_model_len,
        kv_blocks=engine.stats()["kv_blocks_total"],
        duration_ms=round((time.perf_counter() - t0) * 1000, 1),
    )
    return engine, resolved


def _import_encoder_library() -> None:
    """Import the embedding model's library (seconds of Python, no tensors) while the model
    loads, so the feature warm-up need not wait for it after start-up."""
    with contextlib.suppress(Exception):  # the warm-up imports it again and reports why not
        import_library()


async def _warm_features(features: FeatureService, delay: float) -> None:
    """Load (or build, once) the dictionaries and the search index in the background, so the
    first features request does not pay for them (the goodfire SDK times out after 10 s).
    The service does the work on the engine thread in short calls, between the steps of
    running generations, and logs each stage; a features request that comes before `delay`
    has passed starts the same build at once."""
    await asyncio.sleep(delay)
    with contextlib.suppress(Exception):  # logged; the request that needs features reports it
        await features.index()


def _build_backends(settings: Settings) -> dict[str, InferenceEngine]:
    """The backends of `settings.models`, by served name (llama-cpp models load here)."""
    backends: dict[str, InferenceEngine] = {}
    for spec in settings.models:
        backends[spec.name] = build_backend(spec, settings)
        log.info("backend ready", model=spec.name, backend=spec.backend)
    return backends


async def _close_backends(backends: dict[str, InferenceEngine]) -> None:
    for backend in backends.values():
        with contextlib.suppress(Exception):  # shutting down: the others still get closed
            await backend.aclose()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def create_app(settings: Settings, engine: AsyncLLMEngine | None = None) -> FastAPI:
    """The server. Without `engine` the lifespan loads the configured model and stops the
    engine at shutdown; a given engine belongs to the caller (who shuts it down).

    Refuses (ValueError) to serve a host other than loopback with API keys off: every caller
    would be the local tenant, with its data and the admin scope."""
    if settings.api_keys == "off" and not _loopback(settings.host):
        raise ValueError(
            f"refusing to serve on {settings.host} with API keys off: anyone who can reach it "
            "would act as the local admin. Set GLASSBOX_API_KEYS=required (make keys with "
            "`glassbox keys create --tenant NAME`), or bind 127.0.0.1"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        traced = tracing.configure(settings.otel_endpoint, settings.otel_service_name)
        encoder_import = None
        if settings.warm_features:
            encoder_import = asyncio.create_task(asyncio.to_thread(_import_encoder_library))
        if engine is None:
            aengine, resolved = await asyncio.to_thread(_build_engine, settings)
        else:
            aengine, resolved = engine, await asyncio.to_thread(resolve, settings)
        name = settings.served_model_name or resolved.name
        db = None
        features = None
        warmup = None
        states = None
        locks = None
        backends: dict[str, InferenceEngine] = {}
        embeddings = None
        embedding_redis = None
        jobs = None
        try:
            backends = await asyncio.to_thread(_build_backends, settings)
            if settings.redis_url:
                embedding_redis = aioredis.from_url(
                    settings.redis_url, socket_timeout=2, socket_connect_timeout=2
                )
                app.state.redis = embedding_redis
            embeddings = build_embeddings(settings, aengine.call, embedding_redis)
            app.state.embeddings = embeddings
            bounds = request_bounds(settings)
            generation = GenerationService(aengine, app.state.metrics, bounds)
            app.state.generation = generation
            registry = ModelRegistry(
                name, settings.model_aliases, aengine.max_model_len, served_models(settings)
            )
            app.state.registry = registry
            app.state.relay = RelayService(registry, backends)
            features = FeatureService(
                aengine,
                settings.cache_dir,
                resolved.fingerprint,
                base_model=name,
                sae_paths=settings.feature_saes,
                vector_dirs=settings.steering_vector_dirs,
                layer=settings.features_layer,
                embedder=embeddings.local,  # one model for /v1/embeddings and the search
                bounds=bounds,
            )
            app.state.features = features
            app.state.ember = EmberService(features, generation, registry)
            db = Database(settings.database_url or default_url(settings.cache_dir))
            app.state.db = db
            secret = settings.auth_secret.get_secret_value() if settings.auth_secret else None
            app.state.keys = KeyService(
                db,
                load_secret(secret, settings.cache_dir),
                cache_seconds=settings.api_keys_cache_seconds,
            )
            app.state.variants = VariantService(db, name, settings.max_variant_edits)
            app.state.steering = SteeringService(features, app.state.variants, registry)
            app.state.grammars = GrammarCompiler(aengine.tokenizer, aengine.vocab_size)
            app.state.openai = OpenAIService(generation, app.state.steering, app.state.grammars)
            app.state.tasks = TaskService(generation, app.state.grammars)
            states = StateService(
                generation,
                db,
                settings.states_dir or settings.cache_dir / "states",
                resolved.fingerprint,
                settings.state_memory_bytes or settings.kv_cache_bytes // 2,
                max_per_tenant=settings.max_states_per_tenant,
            )
            app.state.states = states
            app.state.chunks = ChunkStore(db)
            redis_jobs = settings.embedding_jobs_queue == "redis"
            jobs = JobService(
                db, embeddings, app.state.chunks,
                quotas=settings.embedding_jobs_quotas, tiers=settings.embedding_jobs_tiers,
                redis_url=settings.redis_url if redis_jobs else None,
                batch_size=settings.embedding_jobs_batch_size,
                workers=settings.embedding_jobs_workers,
            )  # fmt: skip
            app.state.jobs = jobs
            files = FileService(
                db,
                settings.files_dir or settings.cache_dir / "files",
                max_per_tenant=settings.max_files_per_tenant,
            )
            app.state.vector_stores = VectorStoreService(
                db, files, app.state.chunks, jobs, embeddings
            )
            await jobs.start()
            app.state.analysis = StateAnalysis(states)
            locks = RedisLocks(settings.redis_url) if settings.redis_url else LocalLocks()
            app.state.sessions = SessionService(
                db, states, generation, app.state.grammars, app.state.steering, locks,
                models=registry, backends=backends,
            )  # fmt: skip
            if settings.warm_features:
                delay = settings.warm_features_after
                warmup = asyncio.create_task(_warm_features(features, delay))
            yield
        finally:
            if warmup is not None and not warmup.done():
                warmup.cancel()
            if features is not None:
                features.close()
            if encoder_import is not None:
                await encoder_import  # a thread: it cannot be cancelled
            if states is not None:
                await states.flush()
            if locks is not None and isinstance(locks, RedisLocks):
                await locks.close()
            if jobs is not None:
                await jobs.stop()
            await _close_backends(backends)
            if embeddings is not None:
                await embeddings.aclose()
            if embedding_redis is not None:
                await embedding_redis.aclose()
            await app.state.limits.aclose()
            if db is not None:
                db.close()
            if engine is None:
                aengine.shutdown()
            if traced:
                tracing.shutdown()

    # require_key: with API keys required, every route needs one (see api/deps.py); then
    # enforce_limits: the tenant's rate limits and back-pressure (see api/limits.py).
    app = FastAPI(
        title="glassbox",
        version=__version__,
        lifespan=lifespan,
        dependencies=[Depends(require_key), Depends(enforce_limits)],
        responses=ERROR_RESPONSES,  # every route's error answers, in the schema
    )
    app.state.settings = settings

    def engine_stats() -> dict[str, int]:
        generation = getattr(app.state, "generation", None)
        return generation.stats() if generation is not None else {}

    def embedding_stats() -> dict[str, Any]:
        embeddings = getattr(app.state, "embeddings", None)
        jobs = getattr(app.state, "jobs", None)
        stats = embeddings.metrics() if embeddings is not None else {}
        return {**stats, "jobs": jobs.stats()} if jobs is not None else stats

    def service_stats(name: str) -> Callable[[], dict[str, Any]]:
        def stats() -> dict[str, Any]:  # the service's, once the lifespan has made it
            service = getattr(app.state, name, None)
            return service.stats() if service is not None else {}

        return stats

    app.state.metrics = Metrics(
        engine_stats, embedding_stats, state_stats=service_stats("states"),
        feature_stats=service_stats("features"), session_stats=service_stats("sessions"),
    )  # fmt: skip
    app.state.limits = RateLimits(settings, app.state.metrics)
    install_error_handlers(app)
    for module in ROUTES:
        app.include_router(module.router)
    install_page(app)  # the playground at /, open like /docs (its API calls need keys)
    # Inside the request context, so that a 413 has its request id, log line and metrics.
    # Inside the size bound: only a body of an allowed size is read whole and checked.
    app.add_middleware(StrictJSONMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        # Outermost, so that preflights (which carry no key) are answered before the key
        # check, and errors carry the CORS headers a browser needs to read them. Any request
        # header: the openai SDK in a browser adds its own (x-stainless-*) to Authorization
        # and Content-Type; the origin list is what guards.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["*"],
            expose_headers=["Retry-After", REQUEST_ID_HEADER],
        )
    return app
