"""Fixtures for scoring tests: a small real pool, real Valkey/Redis, the reference scorer."""

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tasks.config import SyntheticConfig, TailcalConfig
from tasks.scoring.reference_scorer import ReferenceScorer, ScorerSettings
from tasks.services import redis_service
from tasks.synth.write import write_pool

TEST_DB = 15  # a shared Redis named by REDIS_URL: tests use (and flush) database 15 only


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scoring-pool") / "pool"
    write_pool(SyntheticConfig(seed=11), out, n=200)
    return out


@pytest.fixture
def redis_url(redis_env, tmp_path):
    """A flushed Redis database: embedded Valkey, or database 15 of REDIS_URL's server."""
    with redis_service(redis_env, tmp_path) as service:
        url = service.url
        if not service.embedded:
            url = urlunsplit(urlsplit(url)._replace(path=f"/{TEST_DB}"))
        client = redis.Redis.from_url(url)
        client.flushdb()
        yield url
        client.flushdb()
        client.close()


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def scorer():
    with ReferenceScorer() as server:
        yield server


def scoring_config(**sections) -> TailcalConfig:
    """The demo's scoring settings with per-test overrides by section."""
    base = {
        "gateway": {
            "url": "embedded",
            "models": [{"name": "reference-vlm", "input_eur_per_mtok": 0.14, "output_eur_per_mtok": 0.55}],
            "concurrency": 16,
            "max_retries": 2,
            "timeout_s": 5,
        },
        "budget": {"cap_eur": 5.0},
        "scoring": {"passes": 1},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return TailcalConfig.model_validate(base)


def start_scorer(settings: ScorerSettings) -> ReferenceScorer:
    server = ReferenceScorer(settings)
    server.start()
    return server
