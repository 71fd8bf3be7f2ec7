"""Thin routers: validate, resolve the model name, call a service."""

from glassbox.api.routes import (
    analysis,
    beam,
    features,
    openai,
    states,
    system,
    tokenize,
    variants,
)

routers = [
    openai.router,
    tokenize.router,
    features.router,
    variants.router,
    states.router,
    analysis.router,
    beam.router,
    system.router,
]
