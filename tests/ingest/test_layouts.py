"""Pool layouts and encodings real writers produce read as the same pool, with the same digest,
as the same rows in one plain flat file; layouts that would need guessing are refused.

Spark output folders (`_SUCCESS`, `.crc`, leftover `_temporary/` attempts), Hive `key=value`
partitions, dictionary / large / view string and binary encodings (pandas, Spark, Polars)
and Delta tables with removed-but-not-vacuumed files; Iceberg, Hudi and Delta logs that
cannot be replayed from JSON are refused with the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tasks.config import PoolConfig, SyntheticConfig
from tasks.errors import EmptyPoolError, PoolSchemaError
from tasks.synth.write import write_pool
from tests.ingest.layouts import (
    delta_add,
    delta_header,
    delta_remove,
    encode,
    stale_copy,
    write_delta_commit,
    write_delta_file,
    write_encoded,
    write_flat,
    write_hive,
    write_spark_output,
)
from tests.support import ingest, jpeg_bytes

pytestmark = pytest.mark.unit

SYNTH = SyntheticConfig(seed=11, image_size=96)
SOURCES = PoolConfig(sources=["line-1", "line-3"])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pa.Table:
    """24 synthetic candidates; conditions include a null, one with a space and a slash, and low_light."""
    out = tmp_path_factory.mktemp("base") / "pool"
    write_pool(SYNTH, out, n=24)
    table = ds.dataset(out, format="parquet").to_table()
    conditions = table.column("condition").to_pylist()
    conditions[3], conditions[5], conditions[7] = "low light/dusk", None, "low_light"
    return table.set_column(table.schema.get_field_index("condition"), "condition", pa.array(conditions, pa.string()))


def flat_pool(table: pa.Table, tmp_path: Path, pool: PoolConfig | None = None) -> tuple[list, object]:
    """The candidates and report of `table` written plainly as one flat file: the reference."""
    return ingest(write_flat(table, tmp_path / "flat" / "pool.parquet"), pool)


def by_id(candidates: list) -> dict[str, tuple]:
    return {c.id: (c.digest, c.condition, c.source, c.class_hint, c.captured_at) for c in candidates}


# --- Spark output folders ---


def test_spark_output_reads_the_committed_part_not_a_leftover_attempt(base, tmp_path):
    # given a Spark output folder: the committed part with 8 ids, _SUCCESS, .crc files, and a stale
    # task attempt under _temporary/ holding the same 8 ids with other bytes, which sorts first
    committed = base.slice(0, 8)
    root = tmp_path / "spark"
    write_spark_output(root, committed)
    every_parquet = sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))
    assert every_parquet[0].startswith("_temporary/"), f"the stale copy sorts first: {every_parquet}"
    # when ingested
    candidates, report = ingest(root)
    # then only the committed part is read: 8 candidates with its bytes, nothing skipped
    assert report.files == 1, f"only the committed part is a pool file: {report.summary()}"
    assert report.candidates == 8 and report.skipped == [], f"8 candidates, 0 skipped: {report.skipped}"
    assert [c.image for c in candidates] == committed.column("image").to_pylist(), "the committed bytes, not stale"
    _, flat = flat_pool(committed, tmp_path)
    assert report.pool_digest == flat.pool_digest, "same digest as the committed rows in one flat file"


def test_any_path_component_starting_with_underscore_or_dot_is_ignored(base, tmp_path):
    # given a pool whose folder also holds Parquet under hidden and _-prefixed folders and names
    root = tmp_path / "pool"
    write_flat(base, root / "data" / "part-0.parquet")
    for ignored in ("_staging/part-0.parquet", ".trash/part-0.parquet", "data/_part-1.parquet", "data/.part-2.parquet"):
        write_flat(stale_copy(base), root / ignored)
    # when ingested, then only data/part-0.parquet is read
    _, report = ingest(root)
    assert report.files == 1 and report.skipped == [], f"one file, nothing skipped: {report.summary()}"
    _, flat = flat_pool(base, tmp_path)
    assert report.pool_digest == flat.pool_digest, "ignored copies never reach the pool"


# --- string and binary encodings ---


def test_polars_view_types_are_read_as_plain_strings_and_binary(base, tmp_path):
    # given a pool written the way current Polars writes it: id string_view, image binary_view
    table = base.slice(0, 6).select(["id", "image"])
    view = pa.table({"id": table["id"].cast(pa.string_view()), "image": table["image"].cast(pa.binary_view())})
    path = tmp_path / "polars.parquet"
    pq.write_table(view, path, store_schema=True)
    read_back = ds.dataset(path, format="parquet").schema
    assert (read_back.field("id").type, read_back.field("image").type) == (pa.string_view(), pa.binary_view()), (
        f"pyarrow hands back view types, the case that was refused: {read_back}"
    )
    # when ingested
    candidates, report = ingest(path)
    # then all 6 rows are candidates, identical to the plain file's
    assert report.candidates == 6 and report.skipped == [], f"6 of 6 candidates: {report.summary()}"
    flat_candidates, flat = flat_pool(table, tmp_path)
    assert by_id(candidates) == by_id(flat_candidates), "same candidates as the plain encoding"
    assert report.pool_digest == flat.pool_digest, "same pool digest as the plain encoding"


@pytest.mark.parametrize("encoding", ["dictionary", "large", "view"])
def test_string_and_binary_encodings_read_as_the_plain_pool(base, tmp_path, encoding):
    # given the pool with every string and binary column in another Arrow encoding
    path = write_encoded(base, tmp_path / f"{encoding}.parquet", encoding)
    stored = ds.dataset(path, format="parquet").schema
    assert stored.field("source").type == encode(base, encoding).schema.field("source").type, (
        f"the encoding survives the round trip, so the test means something: {stored}"
    )
    # when ingested, with and without a source filter (pushed down on the encoded column)
    candidates, report = ingest(path)
    filtered, filtered_report = ingest(path, SOURCES)
    # then the candidates, their metadata and the digest are the plain file's
    flat_candidates, flat = flat_pool(base, tmp_path)
    assert by_id(candidates) == by_id(flat_candidates), f"{encoding}: same candidates as the plain file"
    assert report.pool_digest == flat.pool_digest, f"{encoding}: same pool digest as the plain file"
    flat_filtered, flat_filtered_report = flat_pool(base, tmp_path, SOURCES)
    assert [c.id for c in filtered] == [c.id for c in flat_filtered] != [], f"{encoding}: filter keeps the same ids"
    assert filtered_report.pool_digest == flat_filtered_report.pool_digest, f"{encoding}: same filtered digest"


# --- Hive partitions ---


def test_hive_partitions_set_metadata_and_match_the_flat_pool(base, tmp_path):
    # given the pool partitioned on source and condition: those values live only in the folder names
    root = tmp_path / "hive"
    write_hive(root, base, ["source", "condition"])
    folders = {str(p.parent.relative_to(root)) for p in root.rglob("*.parquet")}
    assert any(f.endswith("/condition=low_light") for f in folders), f"a low_light folder: {sorted(folders)}"
    assert any("__HIVE_DEFAULT_PARTITION__" in f for f in folders), f"null written as the Hive default: {folders}"
    assert any("low%20light%2Fdusk" in f for f in folders), f"value percent-encoded in the path: {folders}"
    first = pq.read_schema(next(root.rglob("*.parquet")))
    assert "condition" not in first.names and "source" not in first.names, f"keys only in paths: {first}"
    # when ingested
    candidates, report = ingest(root)
    # then each candidate's condition and source are the flat file's (strings, null kept null)
    flat_candidates, flat = flat_pool(base, tmp_path)
    assert by_id(candidates) == by_id(flat_candidates), "partition values become the same metadata"
    assert report.pool_digest == flat.pool_digest, "same pool digest as one flat file"
    conditions = {c.id: c.condition for c in candidates}
    assert (conditions["c0000003"], conditions["c0000005"]) == ("low light/dusk", None), f"decoded: {conditions}"


def test_source_filter_on_a_partition_key_matches_the_flat_pool(base, tmp_path):
    # given a pool partitioned on source only; when filtered on sources
    root = tmp_path / "hive"
    write_hive(root, base, ["source"])
    candidates, report = ingest(root, SOURCES)
    # then the same rows as filtering the flat file, and the other partitions are not read
    flat_candidates, flat = flat_pool(base, tmp_path, SOURCES)
    assert sorted(c.id for c in candidates) == sorted(c.id for c in flat_candidates), "same filtered ids"
    assert report.rows_matched == flat.rows_matched == len(flat_candidates), f"row counts: {report.summary()}"
    assert report.pool_digest == flat.pool_digest, "same filtered digest as the flat file"


def test_a_row_whose_value_disagrees_with_its_partition_folder_is_skipped(tmp_path):
    # given a file under condition=low_light/ that also carries a condition column, one row disagreeing
    path = write_flat(
        pa.table({"id": ["a", "b"], "image": [jpeg_bytes(), jpeg_bytes()], "condition": ["low_light", "glare"]}),
        tmp_path / "pool" / "condition=low_light" / "part-0.parquet",
    )
    # when ingested
    candidates, report = ingest(path.parent.parent)
    # then the agreeing row is kept and the other is skipped, naming both values
    assert [(c.id, c.condition) for c in candidates] == [("a", "low_light")], f"kept: {candidates}"
    assert [s.id for s in report.skipped] == ["b"], f"skipped: {report.skipped}"
    reason = report.skipped[0].reason
    assert "'glare' in the file" in reason and "'low_light' in the folder condition=low_light" in reason, reason


@pytest.mark.parametrize("key", ["captured_at", "id"])
def test_partitioning_on_a_per_row_column_is_refused(tmp_path, key):
    path = write_flat(
        pa.table({"image": [jpeg_bytes()], **({"id": ["a"]} if key != "id" else {})}),
        tmp_path / "pool" / f"{key}=2026-01-05" / "part-0.parquet",
    )
    with pytest.raises(PoolSchemaError) as error:
        ingest(tmp_path / "pool")
    message = str(error.value)
    assert str(path) in message and f"write '{key}' into the Parquet files" in message, f"file and fix: {message}"


# --- Delta Lake ---


@pytest.fixture
def delta_table(base, tmp_path) -> tuple[Path, pa.Table]:
    """A Delta table partitioned on condition, at version 1 after an UPDATE and a DELETE that rewrote
    the `normal` partition; the old file is still on disk (no VACUUM). Returns (root, current rows)."""
    root = tmp_path / "delta"
    groups: dict[str | None, pa.Table] = {}
    for value in base.column("condition").unique().to_pylist():
        mask = pc.is_null(base["condition"]) if value is None else pc.equal(base["condition"], value)
        groups[value] = base.filter(mask)
    paths = {
        value: write_delta_file(root, rows, {"condition": value}, f"part-{i:05d}-a1.c000.snappy.parquet")
        for i, (value, rows) in enumerate(groups.items())
    }
    write_delta_commit(
        root, 0, [*delta_header(["condition"]), *(delta_add(paths[v], {"condition": v}) for v in groups)]
    )
    # version 1: in "normal", drop the first row and re-encode the second row's image
    normal = groups["normal"]
    images = normal.column("image").to_pylist()
    images[1] = jpeg_bytes((90, 70))
    rewritten = normal.set_column(normal.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    rewritten = rewritten.slice(1)
    new_path = write_delta_file(root, rewritten, {"condition": "normal"}, "part-00000-b2.c000.snappy.parquet")
    write_delta_commit(root, 1, [delta_remove(paths["normal"]), delta_add(new_path, {"condition": "normal"})])
    (root / "_delta_log" / "00000000000000000001.crc").write_text("{}")
    write_flat(normal, root / "_change_data" / "cdc-00000.c000.snappy.parquet")
    current = pa.concat_tables([rows for value, rows in groups.items() if value != "normal"] + [rewritten])
    return root, current


def test_delta_table_reads_only_its_current_files(delta_table, tmp_path):
    # given a Delta table whose folder still holds the file version 1 removed
    root, current = delta_table
    on_disk = len([p for p in root.rglob("*.parquet") if not str(p.relative_to(root)).startswith("_")])
    # when ingested
    candidates, report = ingest(root)
    # then exactly the current rows come out, with the log's partition values, as one flat file would give
    assert report.files == on_disk - 1, f"the removed file is not read ({on_disk} on disk): {report.summary()}"
    flat_candidates, flat = flat_pool(current, tmp_path)
    assert by_id(candidates) == by_id(flat_candidates), "current rows only, with their metadata"
    assert report.pool_digest == flat.pool_digest, "same pool digest as the current rows in one flat file"
    assert report.skipped == [], f"nothing resurrected as a duplicate: {report.skipped}"


def test_delta_source_filter_on_a_log_partition(base, tmp_path):
    # given a Delta table partitioned on source whose files sit at the root (paths say nothing)
    root = tmp_path / "delta"
    adds = []
    for i, value in enumerate(sorted(set(base.column("source").to_pylist()))):
        rows = base.filter(pc.equal(base["source"], value))
        write_flat(rows.drop_columns(["source"]), root / f"part-{i:05d}.parquet")
        adds.append(delta_add(f"part-{i:05d}.parquet", {"source": value}))
    write_delta_commit(root, 0, [*delta_header(["source"]), *adds])
    # when ingested with a source filter, then it matches the flat file's result
    candidates, report = ingest(root, SOURCES)
    flat_candidates, flat = flat_pool(base, tmp_path, SOURCES)
    assert by_id(candidates) == by_id(flat_candidates), "sources come from the log's partition values"
    assert report.pool_digest == flat.pool_digest, "same filtered digest as the flat file"


def _checkpointed(root: Path) -> str:
    # commits 0-9 cleaned up after the checkpoint at 10
    (root / "_delta_log").mkdir(parents=True)
    (root / "_delta_log" / "00000000000000000010.checkpoint.parquet").write_bytes(b"PAR1")
    write_delta_commit(root, 11, [delta_add("part-0.parquet", {})])
    return "starts at version 11"


def _deletion_vector(root: Path) -> str:
    dv = {
        "storageType": "u",
        "pathOrInlineDv": "ab^-aqEH.-t@S}K{vb[*k^",
        "offset": 4,
        "sizeInBytes": 40,
        "cardinality": 2,
    }
    header = delta_header([], reader=3, reader_features=["deletionVectors"])
    write_delta_commit(root, 0, [*header, delta_add("part-0.parquet", {}, deletionVector=dv)])
    return "part-0.parquet has a deletion vector"


def _column_mapping(root: Path) -> str:
    header = delta_header([], reader=2, configuration={"delta.columnMapping.mode": "name"})
    write_delta_commit(root, 0, [*header, delta_add("part-0.parquet", {})])
    return "delta.columnMapping.mode=name"


def _catalog_managed(root: Path) -> str:
    header = delta_header([], reader=3, reader_features=["catalogManaged"])
    write_delta_commit(root, 0, [*header, delta_add("part-0.parquet", {})])
    return "['catalogManaged']"


def _missing_file(root: Path) -> str:
    write_delta_commit(root, 0, [*delta_header([]), delta_add("part-0.parquet", {}), delta_add("gone.parquet", {})])
    return "gone.parquet is missing"


def _nested_delta(root: Path) -> str:
    write_delta_commit(root / "tables" / "pool", 0, [*delta_header([]), delta_add("part-0.parquet", {})])
    write_flat(pa.table({"id": ["b"], "image": [jpeg_bytes()]}), root / "tables" / "pool" / "part-0.parquet")
    return "point pool.uri at the table folder itself"


def _iceberg(root: Path) -> str:
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "00001-5f0c2a1e.metadata.json").write_text("{}")
    write_flat(pa.table({"id": ["b"], "image": [jpeg_bytes()]}), root / "data" / "00000-0-a1.parquet")
    return "Apache Iceberg table"


def _hudi(root: Path) -> str:
    (root / ".hoodie").mkdir(parents=True)
    (root / ".hoodie" / "hoodie.properties").write_text("hoodie.table.name=pool\n")
    return "Apache Hudi table"


@pytest.mark.parametrize(
    "make",
    [_checkpointed, _deletion_vector, _column_mapping, _catalog_managed, _missing_file, _nested_delta, _iceberg, _hudi],
    ids=[
        "checkpointed",
        "deletion-vector",
        "column-mapping",
        "unknown-reader-feature",
        "missing-file",
        "nested",
        "iceberg",
        "hudi",
    ],
)
def test_table_layouts_that_cannot_be_read_exactly_are_refused_with_the_fix(tmp_path, make):
    # given a folder whose plain Parquet read would be wrong without an error
    root = tmp_path / "table"
    write_flat(pa.table({"id": ["a"], "image": [jpeg_bytes()]}), root / "part-0.parquet")
    expected = make(root)
    # when ingested, then it is refused: the message names the table and what to do
    with pytest.raises(PoolSchemaError) as error:
        ingest(root)
    message = str(error.value)
    assert expected in message, f"expected {expected!r} in: {message}"
    assert str(root) in message, f"the pool or file is named: {message}"
    assert any(fix in message for fix in ("export the table", "point pool.uri", "restore the file")), (
        f"a fix is named: {message}"
    )


def test_optional_columns_written_with_the_null_type_read_as_missing_values(tmp_path):
    # given a pool whose condition and captured_at columns are all None (pandas/Polars write Arrow null)
    images = [jpeg_bytes((48, 32)) for _ in range(3)]
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "image": pa.array(images, pa.binary()),
            "condition": pa.nulls(3),
            "captured_at": pa.nulls(3),
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet")
    # when ingested
    candidates, report = ingest(tmp_path)
    # then every row is a candidate with no condition, nothing skipped
    assert [c.id for c in candidates] == ["a", "b", "c"] and report.skipped == [], report.summary()
    assert all(c.condition is None and c.captured_at is None for c in candidates), "missing values stay missing"


def test_files_that_may_be_parquet_under_another_name_are_named_not_silently_dropped(tmp_path, caplog):
    table = pa.table({"id": ["a"], "image": pa.array([jpeg_bytes((32, 32))], pa.binary())})
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(table.set_column(0, "id", pa.array(["b"])), tmp_path / "000000_0")
    with caplog.at_level(logging.WARNING, logger="tasks.ingest.layout"):
        candidates, _ = ingest(tmp_path)
    assert [c.id for c in candidates] == ["a"], "only the *.parquet file is read"
    assert any("000000_0" in r.getMessage() and "not read" in r.getMessage() for r in caplog.records), (
        "the file left out is named"
    )
    (tmp_path / "part-0.parquet").unlink()
    with pytest.raises(EmptyPoolError, match=r"000000_0.*rename them"):
        ingest(tmp_path)
