"""create_app(settings): the engine, the services over it, and the routers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from glassbox import __version__
from glassbox.api.errors import install_error_handlers
from glassbox.api.middleware import RequestContextMiddleware
from glassbox.api.routes import ember, routers
from glassbox.config import Settings
from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.llm_engine import LLMEngine
from glassbox.logs import get_logger
from glassbox.metrics import Metrics
from glassbox.models.loader import ResolvedModel, resolve_model
from glassbox.services.ember import EmberService
from glassbox.services.features import FeatureService
from glassbox.services.generation import GenerationService
from glassbox.services.model_registry import ModelRegistry
from glassbox.services.openai_compat import OpenAIService
from glassbox.services.states import StateService
from glassbox.services.steering import SteeringService
from glassbox.services.variants import VariantService
from glassbox.store import Database
from glassbox.store.db import default_url

log = get_logger(__name__)


def _build_engine(settings: Settings) -> tuple[AsyncLLMEngine, ResolvedModel]:
    t0 = time.perf_counter()
    engine, resolved = LLMEngine.from_settings(settings)
    log.info(
        "engine ready",
        model=resolved.name,
        directory=str(resolved.directory),
        max_model_len=engine.config.max_model_len,
        kv_blocks=engine.config.num_blocks,
        duration_ms=round((time.perf_counter() - t0) * 1000, 1),
    )
    return AsyncLLMEngine(engine), resolved


async def _warm_features(features: FeatureService, delay: float) -> None:
    """Load (or build, once) the dictionaries and the search index in the background, so the
    first features request does not pay for them (the goodfire SDK times out after 10 s).
    It starts `delay` seconds after start-up: loading the embedding model holds the GIL for
    seconds, and the server's first answers should not wait for it."""
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    try:
        await features.index()
    except Exception:  # the request that needs features will report the problem
        log.exception("feature warm-up failed")
        return
    log.info("features ready", duration_ms=round((time.perf_counter() - t0) * 1000, 1))


def create_app(settings: Settings, engine: AsyncLLMEngine | None = None) -> FastAPI:
    """The server. Without `engine` the lifespan loads the configured model and stops the
    engine at shutdown; a given engine belongs to the caller (who shuts it down)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is None:
            aengine, resolved = await asyncio.to_thread(_build_engine, settings)
        else:
            aengine, resolved = engine, await asyncio.to_thread(resolve_model, settings)
        name = settings.served_model_name or resolved.name
        db = None
        warmup = None
        states = None
        try:
            generation = GenerationService(aengine, app.state.metrics)
            app.state.generation = generation
            registry = ModelRegistry(name, settings.model_aliases, aengine.max_model_len)
            app.state.registry = registry
            features = FeatureService(
                aengine,
                settings.cache_dir,
                resolved.fingerprint,
                base_model=name,
                sae_paths=settings.feature_saes,
                vector_dirs=settings.steering_vector_dirs,
                layer=settings.features_layer,
            )
            app.state.features = features
            app.state.ember = EmberService(features, generation, registry)
            db = Database(settings.database_url or default_url(settings.cache_dir))
            app.state.variants = VariantService(db, name)
            app.state.steering = SteeringService(features, app.state.variants, registry)
            app.state.openai = OpenAIService(generation, app.state.steering)
            states = StateService(
                generation,
                db,
                settings.states_dir or settings.cache_dir / "states",
                resolved.fingerprint,
                settings.state_memory_bytes or settings.kv_cache_bytes // 2,
            )
            app.state.states = states
            if settings.warm_features:
                delay = settings.warm_features_after
                warmup = asyncio.create_task(_warm_features(features, delay))
            yield
        finally:
            if warmup is not None and not warmup.done():
                warmup.cancel()
            if states is not None:
                await states.flush()
            if db is not None:
                db.close()
            if engine is None:
                aengine.shutdown()

    app = FastAPI(title="glassbox", version=__version__, lifespan=lifespan)
    app.state.settings = settings

    def engine_stats() -> dict[str, int]:
        generation = getattr(app.state, "generation", None)
        return generation.stats() if generation is not None else {}

    app.state.metrics = Metrics(engine_stats)
    install_error_handlers(app)
    for router in [*routers, ember.router]:
        app.include_router(router)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    return app
