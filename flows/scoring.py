"""Scoring in the flows: each shard a Prefect task, and the scoring-only flow (`tailcal score`).

The scoring job itself (`tasks.scoring.job.score_pool`) knows nothing of Prefect: this
module hands it `score_shard.submit` as the way to run a shard, and a progress artifact.

    tailcal score --config configs/demo.yaml --dry-run
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.stages import flow_run_tags, pool_profiles, prepare_benchmark, profile_shard
from tasks import tracking
from tasks.config import Override, RuntimeEnv, ScoringSetup, TailcalConfig, load_for
from tasks.services import RedisService, gateway_endpoint, offline_environment, redis_service

if TYPE_CHECKING:  # importing scoring loads litellm (~6 s); `prefect deploy` imports this module
    from prefect_dask import DaskTaskRunner

    from tasks.calibration.profiles import ActivationProfiles
    from tasks.ingest import Candidate
    from tasks.scoring.job import ScoringOutcome
    from tasks.scoring.passes import ScoringSession
    from tasks.scoring.prompts import PromptTemplate
    from tasks.scoring.results import CostForecast
    from tasks.scoring.shards import ShardResult


def _transient(task, task_run, state) -> bool:
    """Retry a shard on transient failures only: a TailcalError (the gateway refused the
    requests, Redis stayed down) would fail the same way again."""
    from tasks.errors import TailcalError

    try:
        state.result()
    except TailcalError:
        return False
    except Exception:  # any other failure is worth one more try; the cache makes it free
        return True
    return True


@task(name="score-shard", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient, cache_policy=NONE)
def score_shard(
    setup: ScoringSetup,
    embedded_redis_url: str | None,
    api_base: str,
    template: PromptTemplate,
    candidates: list[Candidate],
    log_path: Path,
) -> ShardResult:
    """One shard, all passes. Secrets are read here from the environment, never passed in."""
    from tasks.scoring.gateway import gateway_key
    from tasks.scoring.metrics import serve_metrics
    from tasks.scoring.shards import score_logged_shard

    serve_metrics(setup.scoring)  # on a Dask worker, its own /metrics; in the flow's process, already served
    redis_url = embedded_redis_url or RuntimeEnv().redis_url.get_secret_value()
    return score_logged_shard(setup, redis_url, api_base, gateway_key(setup.gateway), template, candidates, log_path)


@dataclass(frozen=True)
class ScoringServices:
    """What scoring runs against: Redis (cache, ledger, rpm), the gateway URL and a session on both."""

    redis: RedisService
    api_base: str
    session: ScoringSession

    @property
    def cache_backend(self) -> str:
        return self.redis.display_url + (" (embedded Valkey)" if self.redis.embedded else "")


@contextmanager
def scoring_services(config: TailcalConfig, env: RuntimeEnv) -> Iterator[ScoringServices]:
    """Redis (or the embedded Valkey) and the gateway (or the reference scorer), for a flow's body."""
    from tasks.scoring.gateway import gateway_key
    from tasks.scoring.passes import open_session
    from tasks.scoring.prompts import load_template

    template = load_template(config.scoring.prompt, config.scoring.prompts_dir)
    with redis_service(env, config.data.data_dir) as redis, gateway_endpoint(config.gateway) as api_base:
        session = open_session(config.scoring_setup, redis.client, api_base, gateway_key(config.gateway), template)
        yield ScoringServices(redis, api_base, session)


@contextmanager
def shard_runner(config: TailcalConfig, env: RuntimeEnv, services: ScoringServices) -> Iterator[ShardSubmitter]:
    """`submit(parameters) → future` for `score-shard` and how many shards to keep in flight: on
    the flow's own thread pool, or with `scoring.runner: dask` on prefect-dask's DaskTaskRunner
    (`dask_runner`).

    Each worker process opens its own scoring session (event loop, `gateway.concurrency`
    calls in flight); the score cache, the budget ledger and the rpm limit live in Redis, so
    they bind across every process. A remote scheduler's workers cannot reach this
    machine's embedded Valkey or loopback reference scorer: that is refused (ConfigError)."""
    from tasks.scoring.job import SHARDS_IN_FLIGHT

    if config.scoring.runner == "threads":
        yield ShardSubmitter(lambda parameters: score_shard.submit(**parameters), SHARDS_IN_FLIGHT)
        return
    refuse_services_dask_cannot_reach(config, env, services)
    with dask_runner(config, env) as runner:
        yield ShardSubmitter(lambda parameters: runner.submit(score_shard, parameters), dask_in_flight(runner))


def refuse_services_dask_cannot_reach(config: TailcalConfig, env: RuntimeEnv, services: ScoringServices) -> None:
    """With `scoring.runner: dask` on a remote scheduler (TAILCAL_DASK_ADDRESS), its workers need the
    Redis and gateway the run uses: one embedded in this process (the Valkey, the loopback
    reference scorer) is refused with a ConfigError naming it and the fix. A run and a dry run
    both check it."""
    from tasks.errors import ConfigError

    address = env.tailcal_dask_address
    if config.scoring.runner != "dask" or not address:
        return
    local = {"Redis": services.redis.embedded, "gateway": config.gateway.url == "embedded"}
    embedded = [name for name, here in local.items() if here]
    if embedded:
        raise ConfigError(
            f"scoring.runner: dask with TAILCAL_DASK_ADDRESS={address} needs services its workers can reach, "
            f"but the {' and '.join(embedded)} here {'are' if len(embedded) > 1 else 'is'} embedded in this "
            "process: set REDIS_URL and gateway.url to shared servers, or unset TAILCAL_DASK_ADDRESS for a "
            "local cluster"
        )


@dataclass(frozen=True)
class ShardSubmitter:
    """How a flow hands shards to its task runner, and how many it keeps in flight there."""

    submit: Callable
    in_flight: int


def dask_in_flight(runner: DaskTaskRunner) -> int:
    """Shards in flight on a Dask cluster: two per worker thread it has now (one running, one
    waiting), and never fewer than the thread pool's `SHARDS_IN_FLIGHT`."""
    from tasks.scoring.job import SHARDS_IN_FLIGHT

    return max(SHARDS_IN_FLIGHT, 2 * sum(runner.client.nthreads().values()))


@contextmanager
def dask_runner(config: TailcalConfig, env: RuntimeEnv) -> Iterator[DaskTaskRunner]:
    """prefect-dask's DaskTaskRunner for `scoring.runner: dask`, started and stopped here: the
    scheduler at TAILCAL_DASK_ADDRESS, else a LocalCluster of `scoring.dask_workers` processes.
    (`refuse_services_dask_cannot_reach` checks first that a remote one's workers can reach
    the services scoring needs.)"""
    from prefect_dask import DaskTaskRunner

    address = env.tailcal_dask_address
    if address:
        runner = DaskTaskRunner(address=address)
    else:
        workers = config.scoring.dask_workers
        # Two shards at a time per process, as the flow's own thread pool runs them: one shard's
        # hashing and tail overlap another's calls; `gateway.concurrency` still bounds the process
        # (its shards share one event loop). One at a time: 0.819 of the bound vs 0.832 (bench/scoring.py (a)).
        cluster = {"n_workers": workers, "threads_per_worker": 2, "processes": True, "dashboard_address": ":0"}
        runner = DaskTaskRunner(cluster_kwargs=cluster | {"env": _worker_environment()})
    where = address or f"a local cluster of {config.scoring.dask_workers} processes"
    get_run_logger().info("shards on Dask: %s", where)
    import logging

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines would drown the run's own
    with runner:
        yield runner


def _worker_environment() -> dict[str, str]:
    """What a local Dask worker process needs to report to this run's Prefect API (the server
    configured, or the ephemeral one this process started — else each worker would start its
    own) and to import litellm offline."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.api.url
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        url = SubprocessASGIServer().api_url  # the ephemeral server of this process, already running
    # Nanny adds these to the environment its worker inherits from this process.
    return offline_environment({}, PREFECT_API_URL=str(url), PREFECT_HOME=str(settings.home))


def pool_profile_stage(config: TailcalConfig, env: RuntimeEnv, fp_ir: Path) -> ActivationProfiles:
    """The pool's activation profiles for the `coverage` and `widest_ranges` strategies (in a flow's body): one task
    here, or with `scoring.runner: dask` shards of `scoring.shard_size` candidates on the Dask
    runner scoring uses, as many in flight as scoring keeps there, merged in pool order. Each image is
    profiled alone, so both give the same profiles. Workers of a remote scheduler must read
    `fp_ir` at the same path (under `data.data_dir`, which their score logs already share)."""
    if config.scoring.runner == "threads":
        return pool_profiles(config.pool, fp_ir)
    from collections import deque

    from tasks.calibration.profiles import merge_profiles
    from tasks.ingest import IngestReport, iter_candidate_batches
    from tasks.scoring.job import shards

    parts: list[ActivationProfiles] = []
    pending: deque = deque()
    with dask_runner(config, env) as runner:
        in_flight = dask_in_flight(runner)
        for shard in shards(iter_candidate_batches(config.pool, env, IngestReport()), config.scoring.shard_size):
            pending.append(runner.submit(profile_shard, {"fp_ir": fp_ir, "candidates": shard}))
            while len(pending) >= in_flight:
                parts.append(pending.popleft().result())
        parts.extend(future.result() for future in pending)
    return merge_profiles(parts)


@dataclass(frozen=True)
class ScoredPool:
    """Scoring's outcome and where its scores.parquet went."""

    outcome: ScoringOutcome
    scores_path: Path
    cache_backend: str


def score_stage(config: TailcalConfig, env: RuntimeEnv, run_dir: Path, largest_k: int | None = None) -> ScoredPool:
    """Stream the pool into `score-shard` tasks and write `<run_dir>/scores.parquet` (in a flow's body).

    With `largest_k`, a pool too small for the calibration set is refused before anything is paid.
    """
    import pyarrow.parquet as pq

    from tasks.ingest import IngestReport, iter_candidate_batches
    from tasks.scoring.job import forecast_cost, refuse_failed_share, score_pool
    from tasks.scoring.shards import scoring_key
    from tasks.selection import check_k_fits

    logger = get_run_logger()
    from tasks.scoring.metrics import serve_metrics

    metrics_port = serve_metrics(config.scoring)
    if metrics_port is not None:
        logger.info("Prometheus metrics on http://127.0.0.1:%d/metrics", metrics_port)
    report = IngestReport()
    batches = iter_candidate_batches(config.pool, env, report)
    if largest_k is not None:
        check_k_fits(largest_k, report.rows_expected, config.pool.uri)
    with scoring_services(config, env) as services:
        session = services.session
        log_dir = config.data.data_dir / "score-logs" / scoring_key(session.setup, session.template, config.pool)
        embedded_url = services.redis.url if services.redis.embedded else None
        progress = create_progress_artifact(0.0, description=f"scoring {report.rows_expected} candidates")

        def forecast(sample: list[Candidate]) -> CostForecast:
            predicted = forecast_cost(session, sample, report.rows_expected)
            logger.info(predicted.describe())
            return predicted

        with shard_runner(config, env, services) as runner:

            def run_shard(index: int, shard: list[Candidate]):
                log_path = log_dir / f"shard-{index:05d}.parquet"
                parameters = {
                    "setup": session.setup,
                    "embedded_redis_url": embedded_url,
                    "api_base": services.api_base,
                    "template": session.template,
                    "candidates": shard,
                    "log_path": log_path,
                }
                return runner.submit(parameters)

            outcome = score_pool(
                batches,
                report,
                config.scoring.passes,
                config.scoring.shard_size,
                run_shard,
                forecast=forecast,
                on_progress=lambda fraction: update_progress_artifact(progress, 100.0 * fraction),
                in_flight=runner.in_flight,
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    scores_path = run_dir / "scores.parquet"
    pq.write_table(outcome.scores, scores_path)
    s = outcome.summary
    logger.info(
        "scored %d candidates: %d calls, hit rate %.1f%%, €%.4f, %d failed, %d unscored",
        s.candidates,
        s.calls,
        100 * s.cache_hit_rate,
        s.spend_eur,
        s.failed,
        s.unscored,
    )
    refuse_failed_share(outcome, config.scoring.max_failed_fraction, str(scores_path))
    return ScoredPool(outcome, scores_path, services.cache_backend)


def log_pool_dataset(run: tracking.RunHandle, config: TailcalConfig, scored: ScoredPool) -> None:
    """The scored pool as the MLflow run's input dataset, named by its content digest."""
    import pandas as pd

    if scored.outcome.ingest.pool_digest:
        sample = pd.DataFrame(scored.outcome.dataset_sample)
        tracking.log_pool_dataset(run, "candidate-pool", config.pool.uri, scored.outcome.ingest.pool_digest, sample)


@dataclass(frozen=True)
class ScoringRunSummary:
    """What `tailcal score` did: the forecast, and unless it was a dry run, the scoring itself."""

    config: str
    pool_uri: str
    forecast: str
    dry_run: bool
    scored: ScoredPool | None = None
    mlflow_run_id: str | None = None

    def describe(self) -> str:
        lines = ["", "tailcal scoring — summary", f"  config        {self.config}", f"  pool          {self.pool_uri}"]
        lines.append(f"  forecast      {self.forecast}")
        if self.scored is None:
            lines.append("  dry run       nothing was sent to the gateway and nothing was paid")
            return "\n".join(lines)
        s = self.scored.outcome.summary
        spearman = "n/a" if s.spearman is None else f"{s.spearman:.3f}"
        lines += [
            f"  scoring       {s.calls} paid calls, cache hit rate {s.cache_hit_rate:.1%}, spend €{s.spend_eur:.4f}, "
            f"{s.failed} failed, {s.unscored} unscored",
            f"                Spearman between passes {spearman}; {self.scored.outcome.reused_shards} shard(s) "
            "reused from logs",
            f"  scores        {self.scored.scores_path}",
            f"  MLflow run    {self.mlflow_run_id}",
        ]
        return "\n".join(lines)


@flow(name="calibration-scoring", task_runner=ThreadPoolTaskRunner(max_workers=2))
def score(
    config_path: str = "configs/demo.yaml",
    prompt: Annotated[str | None, Override("scoring.prompt")] = None,
    subset_size: Annotated[int | None, Override("pool.subset_size")] = None,
    dry_run: bool = False,
    release_id: str | None = None,
) -> ScoringRunSummary:
    """Score the candidate pool only: difficulty per candidate, written to scores.parquet.

    The cost forecast is logged before anything is paid; a rerun pays nothing for what
    was scored before.

    Args:
        config_path: YAML config file.
        prompt: Prompt template, e.g. difficulty-v1 (scoring.prompt).
        subset_size: Score only a deterministic sample of this many candidates (pool.subset_size).
        dry_run: Print the cost forecast and stop: nothing is sent to the gateway or paid.
        release_id: Release identifier for the MLflow run name and tags.
    """
    from tasks.ingest import IngestReport, iter_candidate_batches
    from tasks.scoring.job import forecast_cost, shards

    config = load_for(score.fn, locals())
    env = RuntimeEnv()
    prepare_benchmark(config.data)
    if dry_run:
        report = IngestReport()
        first = next(shards(iter_candidate_batches(config.pool, env, report), config.scoring.shard_size))
        with scoring_services(config, env) as services:
            refuse_services_dask_cannot_reach(config, env, services)  # the real run would stop on it
            forecast = forecast_cost(services.session, first, report.rows_expected)
        return ScoringRunSummary(config_path, config.pool.uri, forecast.describe(), dry_run=True)

    tags = {"kind": "scoring", "release_id": release_id or "", "prompt": config.scoring.prompt, **flow_run_tags()}
    run_name = release_id or f"scoring-{flow_run.get_name() or 'local'}"
    with tracking.run(
        env, config.data.data_dir, config.tracking.experiment, run_name, tags, tracking.config_params(config)
    ) as run:
        scored = score_stage(config, env, config.data.data_dir / "runs" / run.run_id)
        log_pool_dataset(run, config, scored)
        tracking.log_metrics(run, scored.outcome.metrics())
        tracking.log_artifact(run, str(scored.scores_path))
    forecast = scored.outcome.forecast.describe() if scored.outcome.forecast else ""
    return ScoringRunSummary(config_path, config.pool.uri, forecast, False, scored, run.run_id)
