"""The API's schema classes have one name each (OpenAPI and readers tell them apart by name),
and the Ember protocol's shapes say so in theirs."""

from __future__ import annotations

import importlib
import pkgutil
from collections import defaultdict
from types import ModuleType

from pydantic import BaseModel

import glassbox.api
import glassbox.api.ember.schemas


def _classes_defined_in(module: ModuleType) -> list[type]:
    return [
        v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
    ]


def _api_modules() -> list[ModuleType]:
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(glassbox.api.__path__, "glassbox.api.")
    ]


def test_schema_class_names_are_unique():
    modules_by_name: dict[str, list[str]] = defaultdict(list)
    for module in _api_modules():
        for cls in _classes_defined_in(module):
            if issubclass(cls, BaseModel):
                modules_by_name[cls.__name__].append(module.__name__)
    duplicates = {name: mods for name, mods in modules_by_name.items() if len(mods) > 1}
    assert not duplicates, f"schema classes that share a name (name: modules): {duplicates}"


def test_ember_shapes_carry_the_ember_name():
    unnamed = [
        cls.__name__
        for cls in _classes_defined_in(glassbox.api.ember.schemas)
        if not cls.__name__.startswith(("_", "Ember"))
    ]
    assert not unnamed, f"Ember shapes whose name does not start with 'Ember': {unnamed}"
