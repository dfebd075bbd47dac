"""A separate process that scores pool rows, for the cross-process budget and crash tests.

    python -m tests.integration.scoring.worker CONFIG POOL_DIR START COUNT OUT_JSON
Reads REDIS_URL and TAILCAL_TEST_API_BASE from the environment.
"""

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.dataset as ds
import redis

from tasks.config import load_config
from tasks.scoring.passes import open_session, score_shard
from tasks.scoring.prompts import load_template


@dataclass
class Row:
    id: str
    image: bytes


def main() -> None:
    config_path, pool_dir, start, count, out = sys.argv[1:6]
    table = ds.dataset(pool_dir, format="parquet").to_table(columns=["id", "image"]).slice(int(start), int(count))
    rows = [Row(i, b) for i, b in zip(table.column("id").to_pylist(), table.column("image").to_pylist(), strict=True)]
    config = load_config(config_path)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    session = open_session(
        config, client, os.environ["TAILCAL_TEST_API_BASE"], "race-key", load_template(config.scoring.prompt)
    )
    print("ready", flush=True)
    records = score_shard(session, rows)
    Path(out).write_text(json.dumps([asdict(r) for r in records]))


if __name__ == "__main__":
    main()
