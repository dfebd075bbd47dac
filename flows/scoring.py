"""Scoring orchestration shared by the flows: the pool streams into shard tasks.

Each shard is a Prefect task (never one per image: ~18 ms of orchestration each); at most
SHARDS_IN_FLIGHT shards of images wait or run at once, so memory stays flat.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from tasks.config import RuntimeEnv, TailcalConfig
from tasks.ingest import Candidate, IngestReport, iter_candidate_batches
from tasks.services import RedisService

if TYPE_CHECKING:  # importing scoring loads litellm (~6 s); `prefect deploy` imports this module
    from tasks.scoring.shards import ShardResult

SHARDS_IN_FLIGHT = 4


@dataclass(frozen=True)
class ScoringOutcome:
    scores_path: Path
    candidates: int
    skipped: int
    pool_digest: str | None
    forecast: str
    calls: int
    cache_hit_rate: float
    spend_eur: float
    spend_eur_per_pass: tuple[float, ...]
    spearman: float | None
    failed: int
    unscored: int
    reused_shards: int
    dataset_sample: dict[str, list]  # first rows of id/condition/class_hint/source, for MLflow


@task(name="score-shard", retries=2, retry_delay_seconds=5, cache_policy=NONE)
def score_shard_task(
    config: TailcalConfig,
    embedded_redis_url: str | None,
    api_base: str,
    template,
    candidates: list[Candidate],
    log_path: Path,
) -> ShardResult:
    """One shard, all passes. Secrets are read here from the environment, never passed in."""
    from tasks.scoring.gateway import gateway_key
    from tasks.scoring.shards import score_logged_shard

    redis_url = embedded_redis_url or RuntimeEnv().redis_url.get_secret_value()
    return score_logged_shard(config, redis_url, api_base, gateway_key(config.gateway), template, candidates, log_path)


def _shards(batches: Iterable[list[Candidate]], size: int) -> Iterator[list[Candidate]]:
    buffer: list[Candidate] = []
    for batch in batches:
        buffer.extend(batch)
        while len(buffer) >= size:
            yield buffer[:size]
            buffer = buffer[size:]
    if buffer:
        yield buffer


def score_pool(config: TailcalConfig, env: RuntimeEnv, redis: RedisService, api_base: str, run_dir: Path):
    """Stream the pool into scoring shards (Prefect tasks), then write scores.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.scoring.gateway import gateway_key, prepare_image
    from tasks.scoring.passes import estimate_hit_rate, open_session
    from tasks.scoring.prompts import load_template
    from tasks.scoring.results import CostForecast, scores_table, summarize
    from tasks.scoring.shards import scoring_key

    logger = get_run_logger()
    if config.scoring.metrics_port:
        from tasks.scoring.metrics import ScoringMetrics

        ScoringMetrics.shared().serve(config.scoring.metrics_port)
        logger.info("Prometheus metrics on http://127.0.0.1:%d/metrics", config.scoring.metrics_port)
    template = load_template(config.scoring.prompt)
    report = IngestReport()
    batches = iter_candidate_batches(config.pool_uri, config.pool, env, report)
    expected = min(report.rows_matched, config.pool.subset_size or report.rows_matched)
    log_dir = config.data_dir / "score-logs" / scoring_key(config, template, config.pool_uri)
    progress = create_progress_artifact(0.0, description=f"scoring {expected} candidates")
    pending: deque = deque()
    records: list = []
    this_run: list = []  # what this run did: reused shards cost it nothing
    metadata: dict[str, list] = {"id": [], "condition": [], "class_hint": [], "source": []}
    forecast, done, reused = "", 0, 0

    def collect() -> None:
        nonlocal done, reused
        result = pending.popleft().result()
        shard_records, was_reused = result.records, result.reused_log
        records.extend(shard_records)
        reused += was_reused
        this_run.extend(
            replace(r, status="cached", cost_eur=0.0) if was_reused and r.status == "scored" else r
            for r in shard_records
        )
        done += len(shard_records) // config.scoring.passes
        update_progress_artifact(progress, min(100.0, 100.0 * done / max(expected, 1)))

    for index, shard in enumerate(_shards(batches, config.scoring.shard_size)):
        if index == 0:
            session = open_session(config, redis.client, api_base, gateway_key(config.gateway), template)
            primary = config.gateway.models[0].name
            forecast = CostForecast(
                candidates=expected,
                passes=config.scoring.passes,
                expected_hit_rate=estimate_hit_rate(session, shard),
                eur_per_call=session.gateway.worst_case_cost(primary, prepare_image(shard[0].image, 10**6)),
            ).describe()
            logger.info(forecast)
        for candidate in shard:
            metadata["id"].append(candidate.id)
            metadata["condition"].append(candidate.condition)
            metadata["class_hint"].append(candidate.class_hint)
            metadata["source"].append(candidate.source)
        log_path = log_dir / f"shard-{index:05d}.parquet"
        embedded_url = redis.url if redis.embedded else None
        pending.append(score_shard_task.submit(config, embedded_url, api_base, template, shard, log_path))
        while len(pending) >= SHARDS_IN_FLIGHT:
            collect()
    while pending:
        collect()

    table = scores_table(records, config.scoring.passes)
    meta = pa.table(metadata)
    order = {candidate_id: row for row, candidate_id in enumerate(table.column("id").to_pylist())}
    meta = meta.take([order[i] for i in meta.column("id").to_pylist() if i in order])
    for name in ("condition", "class_hint", "source"):
        table = table.append_column(name, meta.column(name))
    run_dir.mkdir(parents=True, exist_ok=True)
    scores_path = run_dir / "scores.parquet"
    pq.write_table(table, scores_path)
    summary = summarize(this_run, config.scoring.passes)
    logger.info(
        "scored %d candidates: %d calls, hit rate %.1f%%, €%.4f, %d failed, %d unscored",
        summary.candidates,
        summary.calls,
        100 * summary.cache_hit_rate,
        summary.spend_eur,
        summary.failed,
        summary.unscored,
    )
    return ScoringOutcome(
        scores_path=scores_path,
        candidates=summary.candidates,
        skipped=len(report.skipped),
        pool_digest=report.pool_digest,
        forecast=forecast,
        calls=summary.calls,
        cache_hit_rate=summary.cache_hit_rate,
        spend_eur=summary.spend_eur,
        spend_eur_per_pass=summary.spend_eur_per_pass,
        spearman=summary.spearman,
        failed=summary.failed,
        unscored=summary.unscored,
        reused_shards=reused,
        dataset_sample={name: values[:1000] for name, values in metadata.items()},
    )
