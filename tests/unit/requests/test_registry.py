"""ModelRegistry: the local model, models of other backends, aliases, and capabilities."""

from __future__ import annotations

import pytest

from glassbox.errors import ModelNotFound, NotCapable
from glassbox.requests.registry import STATES, STEERING, ModelRegistry, ServedModel

REMOTE = ServedModel("big", "openai-upstream", 8192, frozenset(), ("gpt-4o",))


def registry(**aliases: str) -> ModelRegistry:
    return ModelRegistry("smol", aliases, 2048, [REMOTE])


def test_every_name_resolves_to_its_model():
    models = registry(mini="smol", large="big")
    assert models.names() == ["smol", "big", "mini", "gpt-4o", "large"]
    assert models.served(None).name == "smol" and models.served(None).local
    assert models.served("mini").name == "smol"
    assert models.served("gpt-4o") is REMOTE and models.served("large") is REMOTE
    assert models.resolve("large") == "large" and models.resolve(None) == "smol"
    with pytest.raises(ModelNotFound, match="'nope' does not exist; this server serves: 'smol'"):
        models.served("nope")


def test_a_capability_the_backend_lacks_is_refused_naming_both():
    models = registry()
    assert models.require("smol", STEERING).local
    with pytest.raises(NotCapable) as err:
        models.require("gpt-4o", STATES, param="model_id")
    assert err.value.param == "model_id"
    assert "'gpt-4o' is served by the 'openai-upstream' backend" in err.value.message
    assert "cannot do 'states'" in err.value.message and "use one of: 'smol'" in err.value.message


def test_bad_configurations_are_refused_at_start():
    with pytest.raises(ValueError, match="alias 'x' points to 'gone'"):
        registry(x="gone")
    with pytest.raises(ValueError, match="'smol' is served twice"):
        ModelRegistry("smol", {}, 2048, [ServedModel("smol", "llama-cpp", None, frozenset())])
