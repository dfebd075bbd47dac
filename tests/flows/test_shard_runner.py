"""Where shards run: a remote Dask scheduler is refused while Redis or the gateway is embedded
here, since its workers could not reach them (the local cluster is exercised end to end in
tests/flows/test_dask_scoring.py)."""

from types import SimpleNamespace

import pytest

from flows.scoring import shard_runner
from tasks.config import RuntimeEnv
from tasks.errors import ConfigError
from tests.support import scoring_config

pytestmark = pytest.mark.unit


def _services(embedded_redis: bool):
    return SimpleNamespace(redis=SimpleNamespace(embedded=embedded_redis))


@pytest.mark.parametrize(
    ("gateway", "embedded_redis", "named"),
    [
        ("embedded", True, "the Redis and gateway here are embedded"),
        ("embedded", False, "the gateway here is embedded"),
        ("https://gateway.example/v1", True, "the Redis here is embedded"),
    ],
)
def test_a_remote_scheduler_with_services_embedded_here_is_refused(gateway, embedded_redis, named):
    config = scoring_config(gateway={"url": gateway}, scoring={"runner": "dask"})
    env = RuntimeEnv(tailcal_dask_address="tcp://scheduler.example:8786")
    refused = pytest.raises(ConfigError, match=rf"TAILCAL_DASK_ADDRESS=tcp://scheduler.example:8786 .*{named}")
    with refused, shard_runner(config, env, _services(embedded_redis)):
        pass
