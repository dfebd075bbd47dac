"""Scenario 5, pool side: bad inputs end as a clear error or a counted skip, and nothing else is lost.

Corrupt, truncated and zero-byte images, a 20k × 20k header (decompression bomb) and a
duplicate id are skipped with their reasons while every good row is ingested and then
scored; a wrong schema and an empty pool are clear errors. (The selection side is in
tests/selection/test_bad_inputs.py, the model side in tests/scoring/test_bad_replies.py.)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import PoolConfig
from tasks.errors import EmptyPoolError, PoolSchemaError
from tasks.ingest import IngestReport
from tasks.scoring.passes import score_shard
from tasks.testing.reference_scorer import ReferenceScorer
from tests.support import bomb_png, ingest, jpeg_bytes, rows, scoring_config, session_for, truncated_jpeg

pytestmark = pytest.mark.reliability

GOOD = 24


def _ingest(uri: Path) -> tuple[list, IngestReport]:
    return ingest(uri, PoolConfig(batch_rows=16))


def _write(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path.parent


def test_bad_images_are_counted_skips_and_every_good_candidate_is_scored(distinct_pool, redis_client, tmp_path):
    # given 24 good rows mixed with corrupt, truncated, empty, bomb and duplicate-id rows
    good = rows(distinct_pool, 0, GOOD)
    bad = {
        "bad-corrupt": b"\xff\xd8\xff\xe0 not really a jpeg",
        "bad-truncated": truncated_jpeg(),
        "bad-empty": b"",
        "bad-bomb": bomb_png(20_000, 20_000),
        good[3].id: jpeg_bytes(),  # a duplicate id with a valid image
    }
    ids = [r.id for r in good[:12]] + list(bad) + [r.id for r in good[12:]]
    images = [r.image for r in good[:12]] + list(bad.values()) + [r.image for r in good[12:]]
    pool = _write(tmp_path / "pool" / "part-0.parquet", pa.table({"id": ids, "image": images}))
    # when the pool is ingested and the candidates scored
    candidates, report = _ingest(pool)
    with ReferenceScorer() as scorer:
        records = score_shard(session_for(scoring_config(), redis_client, scorer.base_url), candidates)
    # then each bad row is skipped with its reason and every good row is ingested and scored
    reasons = {s.id: s.reason for s in report.skipped}
    assert [c.id for c in candidates] == [r.id for r in good], f"all {GOOD} good rows kept, in order"
    assert sorted(reasons) == sorted(bad), f"exactly the 5 bad rows are skipped: {reasons}"
    assert reasons[good[3].id] == "duplicate id", reasons[good[3].id]
    assert reasons["bad-empty"].startswith("empty object (0 bytes)"), reasons["bad-empty"]
    assert reasons["bad-bomb"].startswith("decompression bomb guard"), reasons["bad-bomb"]
    for name in ("bad-corrupt", "bad-truncated"):
        assert reasons[name].startswith(("corrupt or truncated image", "not an image")), reasons[name]
    assert report.rows_seen == GOOD + len(bad) and report.candidates == GOOD, report.summary()
    assert Counter(r.status for r in records) == {"scored": GOOD}, f"{Counter(r.status for r in records)}"


@pytest.mark.parametrize(
    ("table", "column"),
    [
        (pa.table({"id": pa.array([1, 2], pa.int64()), "image": [jpeg_bytes(), jpeg_bytes()]}), "'id'"),
        (pa.table({"id": ["a", "b"], "image": ["not", "bytes"]}), "'image'"),
        (pa.table({"id": ["a", "b"], "pixels": [jpeg_bytes(), jpeg_bytes()]}), "'image'"),
        (pa.table({"name": ["a"], "image": [jpeg_bytes()]}), "'id'"),
    ],
    ids=["id-int64", "image-string", "no-image-column", "no-id-column"],
)
def test_wrong_parquet_schema_is_an_error_naming_the_column_and_file(table, column, tmp_path):
    # given a pool file whose schema breaks the contract
    pool = _write(tmp_path / "pool" / "part-0.parquet", table)
    # when it is ingested, then the error names the column and the file
    with pytest.raises(PoolSchemaError) as error:
        _ingest(pool)
    assert column in str(error.value) and "part-0.parquet" in str(error.value), f"unclear: {error.value}"


def test_empty_pools_are_clear_errors(tmp_path):
    # given a pool file with no rows, and one whose only rows are unusable
    schema = pa.schema([("id", pa.string()), ("image", pa.binary())])
    empty = _write(tmp_path / "empty" / "part-0.parquet", schema.empty_table())
    unusable = _write(tmp_path / "bad" / "part-0.parquet", pa.table({"id": ["x", "y"], "image": [b"", b"junk"]}))
    # when each is ingested, then the error says the pool is empty and why
    with pytest.raises(EmptyPoolError, match="has no rows"):
        _ingest(empty)
    with pytest.raises(EmptyPoolError, match=r"all 2 row\(s\) were skipped"):
        _ingest(unusable)
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(EmptyPoolError, match=r"no \*\.parquet"):
        _ingest(tmp_path / "nothing-here")


def test_errors_name_the_setting_that_named_the_location(tmp_path):
    # given production frames read through the pool reader (the drift monitor), at a path that does
    # not exist, an empty folder and an empty file
    from tasks.config import RuntimeEnv
    from tasks.ingest import iter_candidate_batches

    setting = "drift.production_uri (--production-uri)"
    (tmp_path / "empty-folder").mkdir()
    schema = pa.schema([("id", pa.string()), ("image", pa.binary())])
    empty_file = _write(tmp_path / "empty" / "part-0.parquet", schema.empty_table())
    for uri, expected in (
        (tmp_path / "absent", "does not exist: check drift.production_uri"),
        (tmp_path / "empty-folder", "check drift.production_uri"),
        (empty_file, "has no rows: check the data written there"),
    ):
        # when each is read, then the message names the production setting, not the pool's
        with pytest.raises(EmptyPoolError) as caught:
            next(iter_candidate_batches(PoolConfig(uri=str(uri)), RuntimeEnv(), IngestReport(), setting))
        message = str(caught.value)
        assert expected in message and "pool.uri" not in message and "generate the pool" not in message, message
