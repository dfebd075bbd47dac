"""The scoring job: the pool streams into shards, a few in flight at once, and their records
become the scores table.

How a shard runs is the caller's choice (`run_shard`): the flows submit each one as a
Prefect task (never one task per image: ~18 ms of orchestration each), a test may call
`score_logged_shard` directly. At most `in_flight` shards of images wait or run at once, so
memory stays flat however large the pool.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import pyarrow as pa

from tasks.errors import GatewayError
from tasks.ingest.models import Candidate, IngestReport
from tasks.scoring.gateway import prepare_image
from tasks.scoring.passes import ScoringSession, estimate_hit_rate
from tasks.scoring.results import CostForecast, ScoringSummary, scores_table, summarize
from tasks.scoring.shards import ShardResult

SHARDS_IN_FLIGHT = 4
# Candidate tags carried into the scores table (selection stratifies on them).
TAG_COLUMNS = ("condition", "class_hint", "source")
DATASET_SAMPLE_ROWS = 1000


class PendingShard(Protocol):
    """A shard being scored: a Prefect future, or anything else whose `result()` blocks for it."""

    def result(self) -> ShardResult: ...


RunShard = Callable[[int, list[Candidate]], PendingShard]


@dataclass(frozen=True)
class ScoringOutcome:
    """What scoring a pool produced.

    `scores` has one row per candidate in pool (ingest) order: `results.scores_table` columns,
    the tags, and `position` (0 for the first candidate ingested);
    `summary` counts what this run did (shards reused from logs cost it nothing);
    `dataset_sample` holds the first rows of id and tags, for MLflow's dataset view.
    """

    scores: pa.Table
    summary: ScoringSummary
    ingest: IngestReport
    forecast: CostForecast | None
    reused_shards: int
    dataset_sample: dict[str, list]

    def metrics(self) -> dict[str, float | None]:
        """Scoring and ingest metrics under MLflow names (`scoring.*`, `ingest.skipped`)."""
        s = self.summary
        metrics: dict[str, float | None] = {
            "scoring.candidates": s.candidates,
            "scoring.calls": s.calls,
            "scoring.cache_hit_rate": s.cache_hit_rate,
            "scoring.spend_eur": s.spend_eur,
            "scoring.spearman_pass0_pass1": s.spearman,
            "scoring.failed": s.failed,
            "scoring.unscored": s.unscored,
            "ingest.skipped": len(self.ingest.skipped),
        }
        return metrics | {f"scoring.spend_eur.pass_{p}": eur for p, eur in enumerate(s.spend_eur_per_pass)}


def forecast_cost(session: ScoringSession, sample: Sequence[Candidate], candidates: int) -> CostForecast:
    """Worst-case cost of scoring `candidates` like `sample`: expected cache misses × the
    primary model's worst-case price per call (image tokens at full size). Pays nothing."""
    primary = session.setup.gateway.models[0].name
    return CostForecast(
        candidates=candidates,
        passes=session.setup.scoring.passes,
        expected_hit_rate=estimate_hit_rate(session, sample),
        eur_per_call=session.gateway.worst_case_cost(primary, prepare_image(sample[0].image, 10**6)),
    )


def shards(batches: Iterable[list[Candidate]], size: int) -> Iterator[list[Candidate]]:
    """Re-cut ingest batches into shards of `size` candidates (the last may be smaller)."""
    buffer: list[Candidate] = []
    for batch in batches:
        buffer.extend(batch)
        while len(buffer) >= size:
            yield buffer[:size]
            buffer = buffer[size:]
    if buffer:
        yield buffer


def score_pool(
    batches: Iterable[list[Candidate]],
    report: IngestReport,
    passes: int,
    shard_size: int,
    run_shard: RunShard,
    forecast: Callable[[list[Candidate]], CostForecast] | None = None,
    on_progress: Callable[[float], None] | None = None,
    in_flight: int = SHARDS_IN_FLIGHT,
) -> ScoringOutcome:
    """Score every candidate of `batches` (from `iter_candidate_batches`, which fills `report`).

    `forecast(first_shard)` runs before the first shard is sent, so its figure is logged
    before anything is paid; `on_progress(fraction)` is called as shards finish.
    """
    pending: deque[PendingShard] = deque()
    records: list = []
    this_run: list = []  # what this run did: reused shards cost it nothing
    tags: dict[str, list] = {"id": [], **{name: [] for name in TAG_COLUMNS}}
    predicted: CostForecast | None = None
    done = reused = 0

    def collect() -> None:
        nonlocal done, reused
        result = pending.popleft().result()
        records.extend(result.records)
        reused += result.reused_log
        this_run.extend(
            replace(r, status="cached", cost_eur=0.0) if result.reused_log and r.status == "scored" else r
            for r in result.records
        )
        done += len(result.records) // passes
        if on_progress:
            on_progress(min(1.0, done / max(report.rows_expected, 1)))

    for index, shard in enumerate(shards(batches, shard_size)):
        if index == 0 and forecast is not None:
            predicted = forecast(shard)
        for candidate in shard:
            tags["id"].append(candidate.id)
            for name in TAG_COLUMNS:
                tags[name].append(getattr(candidate, name))
        pending.append(run_shard(index, shard))
        while len(pending) >= in_flight:
            collect()
    while pending:
        collect()

    table = scores_table(records, passes)
    order = {candidate_id: row for row, candidate_id in enumerate(tags["id"])}
    rows = [order[i] for i in table.column("id").to_pylist()]
    for name in TAG_COLUMNS:
        table = table.append_column(name, pa.array([tags[name][row] for row in rows], pa.string()))
    # `position` is the candidate's place in the ingest stream (file order, then row order):
    # `first_n` takes the first K by it, whatever order shards finished in and however ids sort.
    table = table.append_column("position", pa.array(rows, pa.int64())).sort_by("position")
    summary = summarize(this_run, passes)
    return ScoringOutcome(
        scores=table,
        summary=summary,
        ingest=report,
        forecast=predicted,
        reused_shards=reused,
        dataset_sample={name: values[:DATASET_SAMPLE_ROWS] for name, values in tags.items()},
    )


def refuse_failed_share(outcome: ScoringOutcome, max_failed_fraction: float, scores_path: str) -> None:
    """Raise GatewayError when more than `max_failed_fraction` of the scored pool's candidates
    got no score because the gateway failed them (every pass failed: 5xx, timeouts, invalid
    replies, after retries). Such failures do not stop scoring one by one (a provider's bad
    moment); a pool where many of them pile up would be selected from what is left, quietly
    without the images the gateway choked on. Budget-cut (unscored) candidates do not count:
    that degradation is configured (`budget.on_exhausted`).
    """
    s = outcome.summary
    if not s.candidates or s.failed <= max_failed_fraction * s.candidates:
        return
    reasons = Counter(
        reason
        for difficulty, reason in zip(
            outcome.scores.column("difficulty").to_pylist(), outcome.scores.column("reason").to_pylist(), strict=True
        )
        if difficulty is None and reason != "budget exhausted"
    )
    reason, count = reasons.most_common(1)[0]
    raise GatewayError(
        f"{s.failed} of {s.candidates} candidates ({s.failed / s.candidates:.1%}) got no score, above "
        f"scoring.max_failed_fraction ({max_failed_fraction:.1%}); most common reason ({count}): {reason}. "
        f"Their rows are in {scores_path}. Fix the gateway or the model it names and run again: scored candidates "
        "are cached and not paid again, only the failed ones are sent."
    )
