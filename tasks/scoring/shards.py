"""Score one shard end to end, with a per-shard score log that makes resume explicit.

The cache already means a rerun pays for nothing it scored before; the log also skips
the hashing and look-ups of shards that finished, and records what each shard did. A log
is reused only when it was written for exactly this shard's ids *and image bytes* (a pool
rewritten under the same ids must be scored again) and every candidate in it got a score:
failed and budget-cut candidates are retried by the next run (their scored neighbours hit
the cache and cost nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from tasks.config import PoolConfig, ScoringSetup
from tasks.scoring.passes import ScorableCandidate, ScoreRecord, open_session, score_shard
from tasks.scoring.prompts import PromptTemplate

log = logging.getLogger(__name__)

_LOG_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("pass_index", pa.int32()),
        ("status", pa.string()),
        ("difficulty", pa.float64()),
        ("factors", pa.list_(pa.string())),
        ("model", pa.string()),
        ("cost_eur", pa.float64()),
        ("latency_s", pa.float64()),
        ("reason", pa.string()),
    ]
)


def scoring_key(setup: ScoringSetup, template: PromptTemplate, pool: PoolConfig) -> str:
    """Identifies a scoring job across reruns: same pool, template, models and passes."""
    parts = {
        "pool": pool.uri,
        "subset": [pool.subset_size, pool.subset_seed],
        "template": [template.id, template.digest],
        "models": [m.name for m in setup.gateway.models],
        "passes": [setup.scoring.passes, setup.scoring.base_seed, setup.scoring.temperature],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


_FINGERPRINT_KEY = b"tailcal.shard_fingerprint"


def shard_fingerprint(candidates: Sequence[ScorableCandidate]) -> str:
    """sha256 over the shard's (id, sha256 of image bytes) pairs, in id order."""
    digest = hashlib.sha256()
    for candidate_id, image_sha in sorted((c.id, hashlib.sha256(c.image).hexdigest()) for c in candidates):
        digest.update(f"{candidate_id}\0{image_sha}\n".encode())
    return digest.hexdigest()


def read_shard_log(path: Path, fingerprint: str) -> list[ScoreRecord] | None:
    """The shard's records if a complete log for exactly this shard (`shard_fingerprint`) exists, else None."""
    if not path.exists():
        return None
    table = pq.read_table(path)
    if (table.schema.metadata or {}).get(_FINGERPRINT_KEY, b"").decode() != fingerprint:
        log.warning("score log %s was written for other candidates or other image bytes; scoring again", path)
        return None
    records = [ScoreRecord(**{**row, "factors": tuple(row["factors"] or ())}) for row in table.to_pylist()]
    if any(r.status in {"failed", "unscored"} for r in records):
        log.info("score log %s has failed or unscored candidates; scoring the shard again", path)
        return None
    return records


def write_shard_log(path: Path, records: Sequence[ScoreRecord], fingerprint: str) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half log behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "factors": list(r.factors)} for r in records]
    temporary = path.with_suffix(".tmp")
    table = pa.Table.from_pylist(rows, schema=_LOG_SCHEMA.with_metadata({_FINGERPRINT_KEY: fingerprint.encode()}))
    pq.write_table(table, temporary)
    temporary.replace(path)


@dataclass(frozen=True)
class ShardResult:
    records: list[ScoreRecord]
    reused_log: bool  # True when a finished log was read instead of scoring


def score_logged_shard(
    setup: ScoringSetup,
    redis_url: str,
    api_base: str,
    api_key: str,
    template: PromptTemplate,
    candidates: Sequence[ScorableCandidate],
    log_path: Path,
) -> ShardResult:
    """Score a shard unless a complete log for exactly these candidates exists."""
    fingerprint = shard_fingerprint(candidates)
    logged = read_shard_log(log_path, fingerprint)
    if logged is not None:
        return ShardResult(logged, reused_log=True)
    client = redis.Redis.from_url(redis_url)
    try:
        session = open_session(setup, client, api_base, api_key, template)
        records = score_shard(session, candidates)
    finally:
        client.close()
    write_shard_log(log_path, records, fingerprint)
    return ShardResult(records, reused_log=False)
