"""Fixtures for scoring tests: a small real pool with bursts, the reference scorer.

Redis (`redis_url`, `redis_client`) and the 2,000-frame `distinct_pool` come from tests/conftest.py.
"""

from pathlib import Path

import pytest

from tasks.config import SyntheticConfig
from tasks.synth.write import write_pool
from tasks.testing.reference_scorer import ReferenceScorer


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scoring-pool") / "pool"
    write_pool(SyntheticConfig(seed=11), out, n=200)
    return out


@pytest.fixture
def scorer():
    with ReferenceScorer() as server:
        yield server
