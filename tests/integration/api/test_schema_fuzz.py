"""Every operation of the OpenAPI schema, fuzzed by schemathesis against a live server of its
own: no input makes a 5xx, every status is one the schema declares for the operation, and
every body has the shape the schema declares for that status (errors included: OpenAI's
error body, declared on every route by `glassbox.api.errors.ERROR_RESPONSES`).

Per operation: the schema's examples; the coverage phase (a set that the schema bounds:
each field at its boundaries, and one invalid value per field and per way of being invalid,
about 60 requests per operation); and `EXAMPLES` fuzzed cases, valid and invalid
(Hypothesis, derandomized: every run sends the same cases). About 5,300 requests in all.

The schema is built at collection from `create_app` (each operation is a test of its own,
and schemathesis's fixture-based loader breaks on pytest 9); the first test checks that it
is the one the live server serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import schemathesis
from helpers.server import LiveServer, running, tiny_settings
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from glassbox.app import create_app

# Both tests need the fuzz server, whose start builds the tiny model's features (once per
# session, shared with tiny_server): tens of seconds, and the fuzzing about a minute more.
pytestmark = pytest.mark.slow

# Fuzzed examples per operation; small, so that the whole file stays within about two minutes
# on two busy cores.
EXAMPLES = 8

# The tiny random model never says EOS: every generation runs to its bound. This bound keeps
# each one short (a larger max_tokens is a 400, which the fuzzer hits too).
MAX_GENERATED_TOKENS = 16

# Failures show every field as sent (schemathesis hides the values of fields whose names
# look secret, such as max_tokens and session_id).
CONFIG = SchemathesisConfig.from_dict({"output": {"sanitization": {"enabled": False}}})


def _schema_of_the_app() -> dict:
    """The schema the server serves at /openapi.json, built without serving: the routes alone
    make it (no model is loaded, no file is written)."""
    return create_app(tiny_settings(Path("unused-model"), Path("unused-cache"))).openapi()


schema = schemathesis.openapi.from_dict(_schema_of_the_app(), config=CONFIG)


@pytest.fixture(scope="module")
def fuzz_server(
    tiny_model_dir: Path, tiny_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
):
    """A server of its own: the fuzzer writes, deletes and revokes freely. Its feature cache
    (concept vectors and label embeddings: derived from the model alone, no tenant's data) is
    the shared tiny server's, built once for both."""
    with httpx.Client(base_url=tiny_server.base_url, timeout=300) as http:
        built = http.post("/features/search", json={"query": "pirate", "session_id": "fuzz"})
        assert built.status_code == 200, built.text
    cache = tmp_path_factory.mktemp("fuzz-cache")
    shutil.copytree(tiny_server.settings.cache_dir / "features", cache / "features")
    fuzz_settings = tiny_settings(tiny_model_dir, cache).model_copy(
        update={"max_generated_tokens": MAX_GENERATED_TOKENS}
    )
    with running(fuzz_settings) as live:
        yield live


def test_the_fuzzed_schema_is_the_served_one(fuzz_server: LiveServer) -> None:
    served = httpx.get(fuzz_server.base_url + "/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == schema.raw_schema


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: a CI failure replays locally
    suppress_health_check=list(HealthCheck),  # a slow server is not a failing one
)
def test_no_server_errors_and_responses_match_the_schema(case, fuzz_server: LiveServer) -> None:
    case.call_and_validate(
        base_url=fuzz_server.base_url,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        timeout=60,
    )
