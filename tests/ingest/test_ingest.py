"""Ingest on local Parquet: validation, skips, filters, the subset sample, digests and errors."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tasks.config import PoolConfig, RuntimeEnv, SyntheticConfig
from tasks.errors import EmptyPoolError, PoolSchemaError
from tasks.ingest import Candidate, IngestReport, PoolDigest, iter_candidate_batches, stream
from tasks.ingest.images import check_image
from tasks.ingest.storage import with_retries
from tasks.synth.write import write_pool
from tests.support import bomb_png, ingest_batches, jpeg_bytes, pool_at, truncated_jpeg

pytestmark = pytest.mark.unit

SYNTH = SyntheticConfig(seed=11, image_size=96)
POOL_ROWS = 60


def flat(batches: list[list[Candidate]]) -> list[Candidate]:
    return [c for batch in batches for c in batch]


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ingest") / "pool"
    write_pool(SYNTH, out, n=POOL_ROWS, rows_per_file=25)  # 3 files: 25 + 25 + 10
    (out / "_SUCCESS").write_bytes(b"")
    return out


@pytest.fixture(scope="module")
def pool_table(pool_dir) -> pa.Table:
    return ds.dataset(pool_dir, format="parquet").to_table()


def write_table(path: Path, rows: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


# --- image validation ---


def test_check_image_accepts_a_real_jpeg_and_reports_its_size():
    check = check_image(jpeg_bytes((64, 48)), max_pixels=10_000)
    assert check.error is None and (check.width, check.height) == (64, 48), f"valid JPEG: {check}"


@pytest.mark.parametrize(
    ("data", "reason_start"),
    [
        (b"", "empty object (0 bytes)"),
        (b"this is not an image at all", "not an image"),
        (truncated_jpeg(), "corrupt or truncated image"),
        (bomb_png(20_000, 20_000), "decompression bomb guard"),
        (bomb_png(3_000, 3_000), "decompression bomb guard: image header claims 3000×3000"),
    ],
    ids=["zero-byte", "not-an-image", "truncated", "bomb-20000", "over-configured-limit"],
)
def test_check_image_rejects_bad_bytes_with_a_reason(data, reason_start):
    # given bytes that must never become a candidate; when checked (limit 4 MP)
    check = check_image(data, max_pixels=4_000_000)
    # then the reason says what is wrong
    assert check.error is not None and check.error.startswith(reason_start), f"expected {reason_start!r}: {check}"


# --- retries ---


def test_transient_errors_are_retried_then_succeed():
    # given a read that fails twice with a transient error
    attempts, sleeps = [], []

    def flaky() -> bytes:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("connection reset by peer")
        return b"ok"

    # when read with 3 retries
    result = with_retries(flaky, 3, what="s3://b/k", sleep=sleeps.append)
    # then it succeeds on the third attempt, after two back-off sleeps
    assert result == b"ok" and len(attempts) == 3, f"3 attempts expected, got {len(attempts)}"
    assert len(sleeps) == 2 and all(s >= 0 for s in sleeps), f"one sleep per retry: {sleeps}"


def test_missing_objects_are_not_retried_and_retries_are_bounded():
    calls = []

    def missing() -> bytes:
        calls.append(1)
        raise FileNotFoundError("no such key")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, 3, what="k", sleep=lambda _: None)
    assert len(calls) == 1, "a missing object is permanent: no retry"

    calls.clear()

    def down() -> bytes:
        calls.append(1)
        raise OSError("503 slow down")

    with pytest.raises(OSError, match="503"):
        with_retries(down, 2, what="k", sleep=lambda _: None)
    assert len(calls) == 3, f"1 attempt + 2 retries, got {len(calls)}"


# --- the stream ---


def test_local_pool_streams_every_row_in_batches(pool_dir, pool_table):
    # given a 60-row pool in 3 files (and a _SUCCESS marker); when read in batches of 16
    batches, report = ingest_batches(pool_dir, PoolConfig(batch_rows=16))
    # then every row becomes a candidate, in file order, in full batches but the last
    assert [len(b) for b in batches] == [16, 16, 16, 12], f"batch sizes: {[len(b) for b in batches]}"
    candidates = flat(batches)
    assert [c.id for c in candidates] == pool_table.column("id").to_pylist(), "ids in file and row order"
    first = candidates[0]
    assert first.image == pool_table.column("image")[0].as_py(), "bytes are kept as stored (sent to the VLM)"
    assert (first.width, first.height) == (96, 96), "size from the decoded header"
    assert first.captured_at is not None and first.captured_at.tzinfo is not None, "captured_at is UTC-aware"
    assert first.condition == pool_table.column("condition")[0].as_py(), "metadata comes along"
    assert report.files == 3 and report.rows_seen == 60 and report.candidates == 60, report.summary()
    assert report.skipped == [] and report.complete, f"nothing skipped, digest set: {report}"


def test_pool_digest_ignores_order_and_layout_but_not_content(pool_dir, tmp_path):
    # given the same pool re-written with another file layout
    relaid = tmp_path / "relaid"
    write_pool(SYNTH, relaid, n=POOL_ROWS, rows_per_file=7)
    _, original = ingest_batches(pool_dir)
    batches, again = ingest_batches(relaid)
    assert again.pool_digest == original.pool_digest, "same candidates, other layout → same pool digest"
    # when the same candidates are added in reverse order, or one is left out
    reversed_digest, shorter = PoolDigest(), PoolDigest()
    for candidate in reversed(flat(batches)):
        reversed_digest.add(candidate)
    for candidate in flat(batches)[1:]:
        shorter.add(candidate)
    assert reversed_digest.hexdigest() == original.pool_digest, "order must not change the digest"
    assert shorter.hexdigest() != original.pool_digest, "a missing candidate must change the digest"


def test_candidate_digest_is_sha256_of_the_bytes(pool_dir):
    candidate = flat(ingest_batches(pool_dir, PoolConfig(subset_size=1))[0])[0]
    assert candidate.digest == hashlib.sha256(candidate.image).hexdigest(), "digest = sha256(image bytes)"


def test_source_and_time_filters_keep_exactly_the_matching_rows(pool_dir, pool_table):
    # given filters on source and a captured_at window
    rows = pool_table.select(["id", "source", "captured_at"]).to_pylist()
    after, before = rows[10]["captured_at"], rows[50]["captured_at"]
    pool = PoolConfig(sources=["line-1", "line-3"], captured_after=after, captured_before=before)
    # when ingested
    batches, report = ingest_batches(pool_dir, pool)
    # then exactly the rows a plain Python filter keeps come out
    expected = [r["id"] for r in rows if r["source"] in {"line-1", "line-3"} and after <= r["captured_at"] < before]
    assert [c.id for c in flat(batches)] == expected, "filter result must match a row-by-row filter"
    assert 0 < report.rows_matched == len(expected) < POOL_ROWS, f"filters apply before reading: {report.summary()}"


def test_naive_filter_datetimes_are_utc(pool_dir, pool_table):
    moment = pool_table.column("captured_at")[30].as_py()
    aware = ingest_batches(pool_dir, PoolConfig(captured_after=moment))[1].candidates
    naive = ingest_batches(pool_dir, PoolConfig(captured_after=moment.astimezone(UTC).replace(tzinfo=None)))[
        1
    ].candidates
    assert aware == naive == 30, f"naive bounds are read as UTC: aware {aware}, naive {naive}"


def test_subset_is_exact_deterministic_and_layout_independent(pool_dir, tmp_path):
    # given the pool and a copy with another file layout
    relaid = tmp_path / "relaid"
    write_pool(SYNTH, relaid, n=POOL_ROWS, rows_per_file=13)

    # when sampled with subset_size=17
    def ids(uri: Path, seed: int) -> list[str]:
        return sorted(c.id for c in flat(ingest_batches(uri, PoolConfig(subset_size=17, subset_seed=seed))[0]))

    first, again, relaid_ids, other_seed = ids(pool_dir, 1), ids(pool_dir, 1), ids(relaid, 1), ids(pool_dir, 2)
    # then the sample has exactly 17 ids, the same ones each time and for any layout, and the seed matters
    assert len(first) == 17 and len(set(first)) == 17, f"exactly subset_size distinct ids: {first}"
    assert first == again == relaid_ids, "same seed → same sample, whatever the file layout"
    assert first != other_seed, "another seed → another sample"


def test_subset_larger_than_pool_keeps_everything(pool_dir):
    _, report = ingest_batches(pool_dir, PoolConfig(subset_size=1000))
    assert report.candidates == POOL_ROWS, f"subset_size above the pool size keeps all rows: {report.summary()}"


def test_bad_rows_are_skipped_with_id_and_reason(tmp_path):
    # given inline and by-path rows: good, corrupt, zero-byte, bomb, duplicate, missing file, no image
    good = jpeg_bytes()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ok.jpg").write_bytes(good)
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    uri = write_table(
        tmp_path / "pool" / "part-0.parquet",
        {
            "id": ["a", "b", "c", "d", "a", "e", "f", "g", "h"],
            "image": [good, b"garbage", b"", bomb_png(), good, None, None, None, None],
            "image_uri": [None, None, None, None, None, "../images/ok.jpg", str(tmp_path / "nope.jpg"), None, None],
        },
    ).parent
    write_table(tmp_path / "pool" / "part-1.parquet", {"id": ["i"], "image_uri": [str(tmp_path / "images/empty.jpg")]})
    # when ingested
    batches, report = ingest_batches(uri)
    # then the good rows stream and every bad one is recorded once, in stream order
    assert [c.id for c in flat(batches)] == ["a", "e"], "only the good inline and the good relative-path image"
    reasons = {s.id: s.reason for s in report.skipped}
    assert [s.id for s in report.skipped] == ["a", "b", "c", "d", "f", "g", "h", "i"], f"skipped: {report.skipped}"
    assert reasons["a"] == "duplicate id", "the later duplicate is the one skipped"
    assert reasons["b"].startswith("not an image"), reasons["b"]
    assert reasons["c"].startswith("empty object (0 bytes)"), reasons["c"]
    assert reasons["d"].startswith("decompression bomb guard"), reasons["d"]
    assert reasons["f"] == f"missing object: {tmp_path / 'nope.jpg'} does not exist", reasons["f"]
    assert reasons["g"] == reasons["h"] == "no image: both image and image_uri are null", reasons["g"]
    assert reasons["i"].startswith("empty object (0 bytes)"), reasons["i"]
    assert report.rows_seen == 10 and report.candidates == 2 and report.complete, report.summary()


def test_missing_required_column_names_column_and_file(tmp_path):
    write_table(tmp_path / "pool" / "a.parquet", {"id": ["x"], "image": [jpeg_bytes()]})
    bad = write_table(tmp_path / "pool" / "b.parquet", {"image": [jpeg_bytes()]})
    with pytest.raises(PoolSchemaError) as error:
        iter_candidate_batches(pool_at(tmp_path / "pool"), RuntimeEnv(), IngestReport())
    assert "'id'" in str(error.value) and str(bad) in str(error.value), f"names column and file: {error.value}"

    no_image = write_table(tmp_path / "other" / "c.parquet", {"id": ["x"], "width": [3]})
    with pytest.raises(PoolSchemaError, match=r"'image' .* or 'image_uri'") as error:
        iter_candidate_batches(pool_at(no_image), RuntimeEnv(), IngestReport())
    assert str(no_image) in str(error.value), f"names the file: {error.value}"


def test_wrong_column_type_and_filter_on_absent_column_are_schema_errors(tmp_path):
    typed = write_table(tmp_path / "typed" / "p.parquet", {"id": [1, 2], "image": [b"", b""]})
    with pytest.raises(PoolSchemaError, match=r"column 'id' has type int64, expected string"):
        iter_candidate_batches(pool_at(typed), RuntimeEnv(), IngestReport())
    plain = write_table(tmp_path / "plain" / "p.parquet", {"id": ["x"], "image": [jpeg_bytes()]})
    with pytest.raises(PoolSchemaError, match=r"lacks column 'source'"):
        iter_candidate_batches(pool_at(plain, PoolConfig(sources=["line-1"])), RuntimeEnv(), IngestReport())


def test_empty_pools_raise_and_name_the_uri(tmp_path, pool_dir):
    only_markers = tmp_path / "markers"
    only_markers.mkdir()
    (only_markers / "_SUCCESS").write_bytes(b"")
    (only_markers / "c0.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(EmptyPoolError, match=r"no \*\.parquet files") as error:
        ingest_batches(only_markers)
    assert str(only_markers) in str(error.value), f"names the URI: {error.value}"
    with pytest.raises(EmptyPoolError, match="does not exist"):
        ingest_batches(tmp_path / "never-written")
    with pytest.raises(EmptyPoolError, match=r"no rows after filters \(sources=\['line-9'\]\)") as error:
        ingest_batches(pool_dir, PoolConfig(sources=["line-9"]))
    assert str(pool_dir) in str(error.value), f"names the URI: {error.value}"


def test_a_pool_where_every_row_is_skipped_is_empty(tmp_path):
    uri = write_table(tmp_path / "p.parquet", {"id": ["a", "b"], "image": [b"junk", b""]})
    report = IngestReport()
    stream = iter_candidate_batches(pool_at(uri), RuntimeEnv(), report)
    with pytest.raises(EmptyPoolError, match="all 2 row"):
        list(stream)
    assert [s.id for s in report.skipped] == ["a", "b"], f"both rows recorded: {report.skipped}"
    assert not report.complete, "no digest for an empty pool"


def test_null_ids_are_reported_not_dropped(tmp_path):
    uri = write_table(tmp_path / "p.parquet", {"id": ["a", None], "image": [jpeg_bytes(), jpeg_bytes()]})
    _, report = ingest_batches(uri)
    assert report.candidates == 1, report.summary()
    assert [s.reason for s in report.skipped] == ["row 1: id is null"], f"null id recorded: {report.skipped}"


def test_timestamps_written_naive_are_read_as_utc(tmp_path):
    moment = datetime(2026, 3, 1, 12, 0)
    uri = write_table(tmp_path / "p.parquet", {"id": ["a"], "image": [jpeg_bytes()], "captured_at": pa.array([moment])})
    candidate = flat(ingest_batches(uri, PoolConfig(captured_before=datetime(2026, 3, 2, tzinfo=UTC)))[0])[0]
    assert candidate.captured_at == moment.replace(tzinfo=UTC), f"naive column → UTC: {candidate.captured_at}"


def test_uri_images_are_fetched_concurrently_within_the_bound(tmp_path, monkeypatch):
    # given 12 by-path images whose reads each take 50 ms, and fetch_concurrency=3
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"img-{i}.jpg")
        paths[-1].write_bytes(jpeg_bytes())
    uri = write_table(
        tmp_path / "pool" / "p.parquet", {"id": [p.stem for p in paths], "image_uri": list(map(str, paths))}
    )
    in_flight, peak, lock = 0, 0, threading.Lock()
    real_read = stream.read_object

    def slow_read(*args, **kwargs):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        try:
            return real_read(*args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(stream, "read_object", slow_read)
    # when ingested
    _, report = ingest_batches(uri.parent, PoolConfig(fetch_concurrency=3))
    # then reads overlap, but never more than 3 at once
    assert report.candidates == 12, report.summary()
    assert peak == 3, f"expected exactly 3 concurrent reads at peak, saw {peak}"


def test_relative_image_paths_resolve_from_the_pool_folder(tmp_path):
    # given a single-file pool URI whose image_uri values are relative to the file's folder
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes())
    uri = write_table(tmp_path / "pool.parquet", {"id": ["a"], "image_uri": ["images/a.jpg"]})
    # when ingested, then the image is found beside the file
    candidates = flat(ingest_batches(uri)[0])
    assert [c.image_uri for c in candidates] == ["images/a.jpg"], f"relative path resolved: {candidates}"
