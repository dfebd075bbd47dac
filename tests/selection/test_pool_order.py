"""Pool order survives ingest and scoring: first_n calibrates on the frames the exporter wrote first.

A realistic pool's ids name the line, so they do not sort in capture order; shards are scored
two at a time and may finish in any order. The scores table must still carry each candidate's
place in the ingest stream, and first_n must take the first K by it.
"""

from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from tasks.config import PoolConfig, RuntimeEnv, SelectionConfig, SyntheticConfig
from tasks.ingest import IngestReport, iter_candidate_batches
from tasks.scoring.job import score_pool
from tasks.scoring.prompts import load_template
from tasks.scoring.shards import score_logged_shard
from tasks.selection import SelectionInput, select_calibration_set
from tasks.synth.write import write_pool
from tests.support import PROMPTS_DIR, scoring_config, start_scorer

pytestmark = pytest.mark.integration

ROWS, PER_FILE, SHARD, K = 90, 40, 20, 25


def test_first_n_takes_the_first_frames_of_the_ingest_stream_after_scoring(redis_url, tmp_path):
    # given a realistic pool of 3 part files whose ids sort by line, not by capture time
    pool_dir = tmp_path / "pool"
    write_pool(SyntheticConfig(seed=5, ordering="runs", run_length=5), pool_dir, n=ROWS, rows_per_file=PER_FILE)
    exported = [i for f in sorted(pool_dir.glob("*.parquet")) for i in pq.read_table(f).column("id").to_pylist()]
    assert sorted(exported) != exported, "the fixture's ids must not sort in pool order"
    # when it is ingested and scored in shards, two in flight, by the reference scorer
    config = scoring_config()
    template = load_template(config.scoring.prompt, PROMPTS_DIR)
    report = IngestReport()
    batches = iter_candidate_batches(PoolConfig(uri=str(pool_dir), batch_rows=16), RuntimeEnv(), report)
    server = start_scorer()
    try:
        with ThreadPoolExecutor(max_workers=2) as threads:

            def run_shard(index: int, shard: list):
                log = tmp_path / f"shard-{index}.parquet"
                setup = config.scoring_setup
                return threads.submit(score_logged_shard, setup, redis_url, server.base_url, "k", template, shard, log)

            outcome = score_pool(batches, report, config.scoring.passes, SHARD, run_shard)
    finally:
        server.stop()
    scores = outcome.scores
    # then the scores table is in ingest order and says so in its position column
    assert scores.column("id").to_pylist() == exported, "scores rows follow the ingest stream"
    assert scores.column("position").to_pylist() == list(range(ROWS)), "position is the place in the stream"
    scored_factors = [row["factors"] for row in scores.to_pylist() if row["difficulty"] is not None]
    assert len(scored_factors) == ROWS and all(isinstance(f, list) for f in scored_factors), "every row has tags"
    assert any(scored_factors), "the reference scorer names factors for some frames"
    # and first_n takes the first K frames the exporter wrote, in that order, even from id-sorted rows
    by_id = SelectionInput.from_table(scores.sort_by("id"))
    chosen = select_calibration_set(by_id, SelectionConfig(strategy="first_n", k=K))
    assert chosen.ids == tuple(exported[:K]), f"first_n must follow the ingest order: {chosen.ids[:5]}…"
