"""Thin routers: validate, resolve the model name, call a service."""

from glassbox.api.routes import openai, system, tokenize

routers = [openai.router, tokenize.router, system.router]
