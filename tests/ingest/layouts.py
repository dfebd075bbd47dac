"""Builders for the pool layouts real writers produce, from an in-memory table (no binary fixtures).

Shared by test_layouts.py (local) and test_s3.py (the same trees uploaded to moto).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tests.support import jpeg_bytes

STRING_COLUMNS = ("id", "class_hint", "condition", "source", "scene_id")


def write_flat(table: pa.Table, path: Path) -> Path:
    """`table` as one plain Parquet file (string/binary columns as plain types)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def stale_copy(table: pa.Table) -> pa.Table:
    """The same ids with other image bytes: what a failed attempt leaves behind."""
    stale = pa.array([jpeg_bytes((40 + i, 30)) for i in range(table.num_rows)], pa.binary())
    return table.set_column(table.schema.get_field_index("image"), "image", stale)


def write_spark_output(root: Path, committed: pa.Table) -> Path:
    """A Spark job's output folder: the committed part, `_SUCCESS`, hidden `.crc` checksums and a
    leftover task attempt under `_temporary/` holding the same ids with stale bytes."""
    name = "part-00000-5f0c2a1e-8d5b-4b8e-9a51-0c3f6d2b7e11-c000.snappy.parquet"
    part = write_flat(committed, root / name)
    (root / "_SUCCESS").write_bytes(b"")
    (root / f".{name}.crc").write_bytes(b"crc")
    (root / "._SUCCESS.crc").write_bytes(b"crc")
    attempt = root / "_temporary" / "0" / "_temporary" / "attempt_202601050600_0001_m_000000_1"
    write_flat(stale_copy(committed), attempt / "part-00000.parquet")
    (attempt / ".part-00000.parquet.crc").write_bytes(b"crc")
    return part


def encode(table: pa.Table, encoding: str) -> pa.Table:
    """`table` with its string and binary columns in another Arrow encoding."""
    columns = []
    for name in table.column_names:
        column = table.column(name)
        if name in STRING_COLUMNS:
            column = {
                "dictionary": lambda c: c.dictionary_encode(),
                "large": lambda c: c.cast(pa.large_string()),
                "view": lambda c: c.cast(pa.string_view()),
            }[encoding](column)
        elif name == "image":
            column = {
                "dictionary": lambda c: c.dictionary_encode(),
                "large": lambda c: c.cast(pa.large_binary()),
                "view": lambda c: c.cast(pa.binary_view()),
            }[encoding](column)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def write_encoded(table: pa.Table, path: Path, encoding: str) -> Path:
    """`table` in `encoding`, with the Arrow schema stored so a reader gets that encoding back
    (as Polars' and pandas' files do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(encode(table, encoding), path, store_schema=True)
    return path


def write_hive(root: Path, table: pa.Table, keys: list[str]) -> None:
    """`table` partitioned Hive-style on `keys` (`key=value` folders, percent-encoded values,
    nulls as __HIVE_DEFAULT_PARTITION__); the key columns live only in the paths."""
    schema = pa.schema([(key, pa.string()) for key in keys])
    ds.write_dataset(
        table,
        root,
        format="parquet",
        partitioning=ds.partitioning(schema, flavor="hive"),
        basename_template="part-{i}.parquet",
    )


# --- Delta Lake, written by hand to the protocol (PROTOCOL.md): no deltalake dependency ---


def delta_header(
    partition_columns: list[str],
    *,
    reader: int = 1,
    reader_features: list[str] | None = None,
    configuration: dict[str, str] | None = None,
) -> list[dict]:
    protocol: dict = {"minReaderVersion": reader, "minWriterVersion": 7 if reader_features else 2}
    if reader_features is not None:
        protocol |= {"readerFeatures": reader_features, "writerFeatures": reader_features}
    schema = {
        "type": "struct",
        "fields": [
            {"name": n, "type": t, "nullable": True, "metadata": {}}
            for n, t in [("id", "string"), ("image", "binary"), ("condition", "string"), ("source", "string")]
        ],
    }
    return [
        {"commitInfo": {"timestamp": 1767592800000, "operation": "WRITE", "engineInfo": "tailcal-tests"}},
        {"protocol": protocol},
        {
            "metaData": {
                "id": "5f0c2a1e-8d5b-4b8e-9a51-0c3f6d2b7e11",
                "format": {"provider": "parquet", "options": {}},
                "schemaString": json.dumps(schema),
                "partitionColumns": partition_columns,
                "configuration": configuration or {},
                "createdTime": 1767592800000,
            }
        },
    ]


def write_delta_file(root: Path, table: pa.Table, partition: dict[str, str | None], name: str) -> str:
    """Write `table` (without its partition columns) as Spark's Delta writer lays it out, and
    return the file's path as the log records it (URI-encoded, relative to the table)."""
    folders = [
        f"{key}={quote(value, safe=' ') if value is not None else '__HIVE_DEFAULT_PARTITION__'}"
        for key, value in partition.items()
    ]
    relative = "/".join([*folders, name])
    write_flat(table.drop_columns(list(partition)), root / relative)
    return quote(relative, safe="/=")


def delta_add(log_path: str, partition: dict[str, str | None], **extra) -> dict:
    return {
        "add": {
            "path": log_path,
            "partitionValues": partition,
            "size": 1,
            "modificationTime": 1767592800000,
            "dataChange": True,
            **extra,
        }
    }


def delta_remove(log_path: str) -> dict:
    return {"remove": {"path": log_path, "deletionTimestamp": 1767596400000, "dataChange": True}}


def write_delta_commit(root: Path, version: int, actions: list[dict]) -> Path:
    path = root / "_delta_log" / f"{version:020d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(action) + "\n" for action in actions))
    return path
