"""A separate process that scores pool rows, for the cross-process budget and crash tests.

    python -m tests.scoring.worker CONFIG POOL_DIR START COUNT OUT_JSON
Reads REDIS_URL and TAILCAL_TEST_API_BASE from the environment.
"""

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import redis

from tasks.config import load_config
from tasks.scoring.passes import open_session, score_shard
from tasks.scoring.prompts import load_template
from tests.support import rows


def main() -> None:
    config_path, pool_dir, start, count, out = sys.argv[1:6]
    candidates = rows(Path(pool_dir), int(start), int(count))
    config = load_config(config_path)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    template = load_template(config.scoring.prompt, config.scoring.prompts_dir)
    session = open_session(config.scoring_setup, client, os.environ["TAILCAL_TEST_API_BASE"], "race-key", template)
    print("ready", flush=True)
    records = score_shard(session, candidates)
    Path(out).write_text(json.dumps([asdict(r) for r in records]))


if __name__ == "__main__":
    main()
