"""Ingest against a real S3 API over HTTP (moto's server) and the same pool on local disk.

pyarrow's S3 client is C++ and bypasses moto's in-process mock, so the pool is served by
`ThreadedMotoServer` and reached through TAILCAL_S3_ENDPOINT, exactly as production
reaches MinIO or Ceph; credentials come from the standard AWS environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from tasks.config import PoolConfig, SyntheticConfig
from tasks.errors import EmptyPoolError, PoolAccessError, PoolSchemaError
from tasks.ingest import Candidate, IngestReport
from tasks.loopback import free_port
from tasks.synth.write import write_pool
from tests.ingest.layouts import (
    delta_add,
    delta_header,
    delta_remove,
    stale_copy,
    write_delta_commit,
    write_delta_file,
    write_flat,
    write_hive,
    write_spark_output,
)
from tests.support import bomb_png, jpeg_bytes, truncated_jpeg
from tests.support import ingest as ingest_pool

pytestmark = pytest.mark.integration

BUCKET = "tailcal-pool"
SYNTH = SyntheticConfig(seed=5, image_size=96)


@dataclass(frozen=True)
class S3:
    client: object
    endpoint: str

    def put(self, key: str, body: bytes) -> str:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body)
        return f"s3://{BUCKET}/{key}"

    def put_table(self, key: str, table: pa.Table) -> str:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return self.put(key, sink.getvalue().to_pybytes())


@pytest.fixture(scope="module")
def s3():
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata on loopback: fail fast, not after a timeout
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            _, port = server.get_host_and_port()
            endpoint = f"http://127.0.0.1:{port}"
            env.setenv("TAILCAL_S3_ENDPOINT", endpoint)
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            yield S3(client, endpoint)
        finally:
            server.stop()


def ingest(uri: str | Path, pool: PoolConfig | None = None) -> tuple[list[Candidate], IngestReport]:
    """Every candidate of the pool at `uri`, read 16 rows at a time unless `pool` says otherwise."""
    return ingest_pool(uri, pool or PoolConfig(batch_rows=16))


def fingerprint(candidates: list[Candidate]) -> list[tuple]:
    return [(c.id, c.digest, c.width, c.height, c.condition, c.source, c.captured_at) for c in candidates]


@pytest.fixture(scope="module")
def inline_pool(tmp_path_factory, s3) -> tuple[Path, str]:
    local = tmp_path_factory.mktemp("inline") / "pool"
    write_pool(SYNTH, local, n=40, rows_per_file=16)
    for part in sorted(local.glob("*.parquet")):
        s3.put(f"inline/{part.name}", part.read_bytes())
    # Objects a Spark job or an image dump leave beside the Parquet: ingest must ignore them,
    # including a leftover task attempt holding the first part's ids with other bytes.
    s3.put("inline/_SUCCESS", b"")
    s3.put("inline/.part-00000.parquet.crc", b"crc")
    s3.put("inline/thumbs/c0000000.jpg", jpeg_bytes())
    first = pq.read_table(sorted(local.glob("*.parquet"))[0])
    s3.put_table("inline/_temporary/0/_temporary/attempt_x/part-00000.parquet", stale_copy(first))
    return local, f"s3://{BUCKET}/inline/"


def test_inline_pool_reads_the_same_from_s3_and_local(inline_pool):
    # given one inline-image pool on local disk and uploaded to S3 (with Spark's _SUCCESS, a .crc,
    # a stale _temporary/ attempt of the first part, and a stray jpg)
    local, uri = inline_pool
    # when both are ingested
    from_local, local_report = ingest(local)
    from_s3, s3_report = ingest(uri)
    # then ids, per-candidate digests and the pool digest agree
    assert len(from_s3) == 40 and s3_report.files == 3, f"3 Parquet parts, 40 rows: {s3_report.summary()}"
    assert fingerprint(from_s3) == fingerprint(from_local), "S3 and local give identical candidates"
    assert s3_report.pool_digest == local_report.pool_digest is not None, "same pool → same pool digest"
    assert from_s3[0].image == from_local[0].image and from_s3[0].image_uri is None, "inline bytes come through"


def test_filters_and_subset_agree_between_s3_and_local(inline_pool):
    local, uri = inline_pool
    pool = PoolConfig(sources=["line-2", "line-3"], subset_size=9, subset_seed=4)
    from_local, _ = ingest(local, pool)
    from_s3, report = ingest(uri, pool)
    table = ds.dataset(local, format="parquet").to_table(columns=["source"])
    in_sources = pc.sum(pc.is_in(table["source"], pa.array(["line-2", "line-3"]))).as_py()
    assert report.rows_matched == in_sources and len(from_s3) == 9, f"filter, then sample 9: {report.summary()}"
    assert {c.source for c in from_s3} <= {"line-2", "line-3"}, "only the requested sources"
    assert [c.id for c in from_s3] == [c.id for c in from_local], "the sample does not depend on the store"


def test_uri_images_read_the_same_from_s3_and_local(tmp_path, s3):
    # given a by-URI pool: locally with image paths, on S3 with s3:// image URIs
    local = tmp_path / "pool"
    write_pool(SyntheticConfig(seed=6, image_size=96, pool_image_mode="uri"), local, n=24)
    table = ds.dataset(local, format="parquet").to_table()
    s3_uris = []
    for path in table.column("image_uri").to_pylist():
        s3_uris.append(s3.put(f"uri-images/{Path(path).name}", Path(path).read_bytes()))
    uri_column = table.schema.get_field_index("image_uri")
    s3.put_table("uri/part-00000.parquet", table.set_column(uri_column, "image_uri", pa.array(s3_uris)))
    # when both are ingested, fetching 4 images at a time
    pool = PoolConfig(fetch_concurrency=4, batch_rows=10)
    from_local, local_report = ingest(local, pool)
    from_s3, s3_report = ingest(f"s3://{BUCKET}/uri", pool)
    # then the fetched bytes and digests match, and the candidates say where they came from
    assert len(from_s3) == 24 and s3_report.skipped == [], f"every image fetched: {s3_report.summary()}"
    assert fingerprint(from_s3) == fingerprint(from_local), "S3 URIs and local paths give identical candidates"
    assert s3_report.pool_digest == local_report.pool_digest, "same candidates → same pool digest"
    assert [c.image_uri for c in from_s3] == s3_uris, "each candidate records its image URI"


def test_bad_objects_on_s3_are_skipped_and_the_run_goes_on(s3):
    # given a pool whose image URIs point at good, corrupt, truncated, empty, bomb and missing objects
    rows = {
        "good": s3.put("bad-images/good.jpg", jpeg_bytes()),
        "corrupt": s3.put("bad-images/corrupt.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"),
        "truncated": s3.put("bad-images/truncated.jpg", truncated_jpeg()),
        "empty": s3.put("bad-images/empty.jpg", b""),
        "bomb": s3.put("bad-images/bomb.png", bomb_png(20_000, 20_000)),
        "missing": f"s3://{BUCKET}/bad-images/never-uploaded.jpg",
        "relative": "../bad-images/good.jpg",  # relative to the pool prefix, on the same store
    }
    ids = [*rows, "good"]  # the last row repeats an id
    s3.put_table("bad/part-0.parquet", pa.table({"id": ids, "image_uri": [*rows.values(), rows["good"]]}))
    # when ingested
    candidates, report = ingest(f"s3://{BUCKET}/bad/")
    # then the good rows stream and each bad one is skipped with its id and reason
    assert [c.id for c in candidates] == ["good", "relative"], f"good rows only: {[c.id for c in candidates]}"
    assert candidates[0].digest == candidates[1].digest, "the relative URI reaches the same object"
    reasons = {s.id: s.reason for s in report.skipped}
    assert [s.id for s in report.skipped] == ["good", "corrupt", "truncated", "empty", "bomb", "missing"], (
        f"skipped in stream order, duplicate first (it is never fetched): {report.skipped}"
    )
    assert reasons["good"] == "duplicate id", reasons["good"]
    assert reasons["corrupt"].startswith(("corrupt or truncated image", "not an image")), reasons["corrupt"]
    assert reasons["truncated"].startswith("corrupt or truncated image"), reasons["truncated"]
    assert reasons["empty"] == f"empty object (0 bytes) ({rows['empty']})", reasons["empty"]
    assert reasons["bomb"].startswith("decompression bomb guard"), reasons["bomb"]
    assert reasons["missing"] == f"missing object: {rows['missing']} does not exist", reasons["missing"]
    assert report.rows_seen == 8 and report.candidates == 2 and report.complete, report.summary()


def test_missing_column_on_s3_names_the_column_and_the_file(s3):
    s3.put_table("schema/part-0.parquet", pa.table({"id": ["a"], "image": [jpeg_bytes()]}))
    bad = s3.put_table("schema/part-1.parquet", pa.table({"name": ["b"], "image": [jpeg_bytes()]}))
    with pytest.raises(PoolSchemaError) as error:
        ingest(f"s3://{BUCKET}/schema/")
    assert "'id'" in str(error.value) and bad in str(error.value), f"column and file named: {error.value}"


def test_prefix_without_parquet_is_an_empty_pool(s3):
    s3.put("nothing/_SUCCESS", b"")
    s3.put("nothing/c0.jpg", jpeg_bytes())
    uri = f"s3://{BUCKET}/nothing/"
    with pytest.raises(EmptyPoolError, match=r"no \*\.parquet files") as error:
        ingest(uri)
    assert uri in str(error.value), f"the URI is named: {error.value}"


def test_unreachable_endpoint_is_an_access_error_that_says_what_to_check(s3, monkeypatch):
    # given TAILCAL_S3_ENDPOINT pointing at a port nothing listens on
    closed_port = free_port()
    monkeypatch.setenv("TAILCAL_S3_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    # when the pool is opened, then the error names the URI and the settings to check
    with pytest.raises(PoolAccessError, match="TAILCAL_S3_ENDPOINT") as error:
        ingest(f"s3://{BUCKET}/inline/")
    assert f"s3://{BUCKET}/inline/" in str(error.value), f"the URI is named: {error.value}"


def upload_tree(s3: S3, root: Path, prefix: str) -> str:
    """Every file under `root`, hidden and `_`-prefixed ones included, as objects under `prefix`."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.put(f"{prefix}/{path.relative_to(root).as_posix()}", path.read_bytes())
    return f"s3://{BUCKET}/{prefix}/"


def _spark(root: Path, table: pa.Table) -> pa.Table:
    write_spark_output(root, table.slice(0, 8))
    return table.slice(0, 8)


def _hive(root: Path, table: pa.Table) -> pa.Table:
    conditions = table.column("condition").to_pylist()
    conditions[0], conditions[1] = "low light/dusk", None  # a percent-encoded and a null partition
    table = table.set_column(table.schema.get_field_index("condition"), "condition", pa.array(conditions, pa.string()))
    write_hive(root, table, ["source", "condition"])
    return table


def _delta(root: Path, table: pa.Table) -> pa.Table:
    # version 0 adds two files; version 1 removes the second (left on disk, as before VACUUM)
    first = write_delta_file(root, table.slice(0, 12), {}, "part-00000-a.c000.snappy.parquet")
    second = write_delta_file(root, table.slice(12), {}, "part-00001-a.c000.snappy.parquet")
    write_delta_commit(root, 0, [*delta_header([]), delta_add(first, {}), delta_add(second, {})])
    write_delta_commit(root, 1, [delta_remove(second)])
    return table.slice(0, 12)


@pytest.mark.parametrize(("layout", "files"), [(_spark, 1), (_hive, None), (_delta, 1)], ids=["spark", "hive", "delta"])
def test_writer_layouts_on_s3_read_like_the_same_rows_in_one_flat_file(s3, tmp_path, layout, files):
    # given a writer's folder (Spark leftovers, Hive partitions, a Delta table with a removed file)
    # on local disk and uploaded object by object to S3, and the rows it holds as one flat file
    synthetic = tmp_path / "synthetic"
    write_pool(SYNTH, synthetic, n=24)
    local = tmp_path / "layout"
    held = layout(local, ds.dataset(synthetic, format="parquet").to_table())
    uri = upload_tree(s3, local, f"layouts/{layout.__name__.strip('_')}")
    # when all three are ingested
    from_local, local_report = ingest(local)
    from_s3, s3_report = ingest(uri)
    _, flat = ingest(write_flat(held, tmp_path / "flat" / "pool.parquet"))
    # then S3 applies the same rules as local, and both read the pool the flat file holds
    assert len(from_s3) == held.num_rows and s3_report.skipped == [], f"0 skipped: {s3_report.summary()}"
    if files is not None:
        assert s3_report.files == files, f"only the pool's own files are read: {s3_report.summary()}"
    assert fingerprint(from_s3) == fingerprint(from_local), "S3 and local give identical candidates"
    assert s3_report.pool_digest == local_report.pool_digest == flat.pool_digest, "one pool digest for all three"
    if layout is _spark:
        assert [c.image for c in from_s3] == held.column("image").to_pylist(), "the committed bytes, not the stale"
