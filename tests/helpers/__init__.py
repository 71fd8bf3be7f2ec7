"""What the tests share, written once: the tiny model, live servers, HTTP helpers, the engine
driver and the PostgreSQL server. Fixtures that use them live in the conftest.py files;
tests import from here, never from a conftest."""
