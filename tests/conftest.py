"""Shared fixtures. Redis-backed tests run on the embedded Valkey always, and also on the
server REDIS_URL names when it is set (DESIGN.md §4)."""

import os

# Prefect reads its logging settings at import; INFO lines from its temporary server arrive
# after pytest has closed its capture and print tracebacks, so keep Prefect at WARNING.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest

REDIS_TARGETS = ["embedded"] + (["redis_url"] if os.environ.get("REDIS_URL") else [])


@pytest.fixture(params=REDIS_TARGETS)
def redis_env(request, monkeypatch):
    """A RuntimeEnv for one Redis target; unsets REDIS_URL for the embedded variant."""
    from tasks.config import RuntimeEnv

    if request.param == "embedded":
        monkeypatch.delenv("REDIS_URL", raising=False)
    return RuntimeEnv()
