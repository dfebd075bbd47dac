"""Parquet side of ingest: per-file schema checks, pushed-down filters and the subset sample.

Arrow hands a string or binary column back in whatever encoding the writer stored in the
file's Arrow schema: dictionary (pandas categoricals, Spark/Arrow dictionary pages read as
such), large (64-bit offsets) or view (current Polars). All are the same logical type, so
the schema check accepts each, and every such column is read as plain `string` (images:
`binary`, or `large_binary` when not stored as plain binary, so no batch overflows 32-bit
offsets): the candidates, filters and digest are those of the same rows written plainly.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.dataset as ds

from tasks.config import PoolConfig
from tasks.errors import PoolSchemaError

from .layout import PoolPart
from .storage import PoolLocation

IMAGE_COLUMNS = ("image", "image_uri")
# width/height are not read: the decoded header is the authority on an image's size.
METADATA_COLUMNS = ("class_hint", "condition", "source", "captured_at")
_STRING_COLUMNS = ("id", "image_uri", "class_hint", "condition", "source")
_SCHEMA_HINT = (
    "a pool needs id (string, unique) and image (binary) or image_uri (string); class_hint, condition, "
    "source (strings) and captured_at (UTC timestamp) are optional (README: Pool schema)"
)
_STRING_CHECKS = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
# Optional columns pandas and Polars write with Arrow's null type when every value is missing:
# read as all-null columns of their type.
_NULLABLE_TYPES = {
    "class_hint": pa.string(),
    "condition": pa.string(),
    "source": pa.string(),
    "captured_at": pa.timestamp("us"),
    "width": pa.int32(),
    "height": pa.int32(),
}
_BINARY_CHECKS = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)


def _logical(data_type: pa.DataType) -> pa.DataType:
    """A dictionary column's value type; any other type as is."""
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def is_string_like(data_type: pa.DataType) -> bool:
    """string, large_string, string_view, or a dictionary of one of them."""
    return any(check(_logical(data_type)) for check in _STRING_CHECKS)


def is_binary_like(data_type: pa.DataType) -> bool:
    """binary, large_binary, binary_view, or a dictionary of one of them."""
    return any(check(_logical(data_type)) for check in _BINARY_CHECKS)


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with every string-like column as `string` and every binary-like one as `binary`
    (`large_binary` when stored in another binary encoding, so batches of big images fit)."""
    fields = []
    for schema_field in schema:
        data_type = schema_field.type
        if pa.types.is_null(data_type) and schema_field.name in _NULLABLE_TYPES:
            schema_field = schema_field.with_type(_NULLABLE_TYPES[schema_field.name])
        elif is_string_like(data_type) and not pa.types.is_string(data_type):
            schema_field = schema_field.with_type(pa.string())
        elif is_binary_like(data_type) and not (pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)):
            schema_field = schema_field.with_type(pa.large_binary())
        fields.append(schema_field)
    return pa.schema(fields, metadata=schema.metadata)


@dataclass(frozen=True)
class PoolFile:
    """One Parquet file, its checked schema, the columns to read and its pushed-down filter."""

    path: str
    display: str
    dataset: ds.Dataset  # reads every string-like column as string (see plain_schema)
    columns: tuple[str, ...]
    filter: ds.Expression | None
    rows: int  # rows matching the filter (0 when the file's partition is filtered out)
    partitions: Mapping[str, str | None] = field(default_factory=dict)  # metadata set by the path or Delta log
    origin: str = ""  # where `partitions` come from, for skip reasons


def open_pool_file(part: PoolPart, location: PoolLocation, pool: PoolConfig) -> PoolFile:
    """Read one file's footer, check its schema and count the rows its filter keeps."""
    display = location.display(part.path)
    try:
        footer = ds.dataset(part.path, filesystem=location.filesystem, format="parquet")
    except (OSError, pa.ArrowInvalid) as exc:
        raise PoolSchemaError(f"{display} is not a readable Parquet file: {exc}. Fix or remove the file") from exc
    schema = footer.schema
    _check_schema(schema, display, pool, part.partitions)
    plain = plain_schema(schema)
    dataset = (
        footer
        if plain.equals(schema)
        else ds.FileSystemDataset(list(footer.get_fragments()), plain, footer.format, footer.filesystem)
    )
    columns = ("id", *(c for c in (*IMAGE_COLUMNS, *METADATA_COLUMNS) if c in schema.names))
    source = part.partitions.get("source")
    if pool.sources and "source" in part.partitions and "source" not in schema.names and source not in pool.sources:
        # The whole file's source is its folder's (or Delta partition's): filtered out without a read.
        return PoolFile(part.path, display, dataset, columns, None, 0, part.partitions, part.origin)
    expression = row_filter(schema, pool)
    rows = dataset.count_rows(filter=expression) if expression is not None else dataset.count_rows()
    return PoolFile(part.path, display, dataset, columns, expression, rows, part.partitions, part.origin)


def _check_schema(schema: pa.Schema, display: str, pool: PoolConfig, partitions: Mapping[str, str | None]) -> None:
    if "id" not in schema.names:
        raise PoolSchemaError(f"{display} lacks required column 'id' (string): {_SCHEMA_HINT}")
    if not any(c in schema.names for c in IMAGE_COLUMNS):
        raise PoolSchemaError(
            f"{display} lacks required column 'image' (binary) or 'image_uri' (string): {_SCHEMA_HINT}"
        )
    filters = {
        "source": ("pool.sources", pool.sources),
        "captured_at": ("pool.captured_after/captured_before", pool.captured_after or pool.captured_before),
    }
    for column, (setting, wanted) in filters.items():
        if wanted and column not in schema.names and column not in partitions:
            raise PoolSchemaError(
                f"{display} lacks column '{column}', which the {setting} filter needs: "
                "add the column to the pool or drop the filter"
            )
    strings = "string (or large_string, string_view, or a dictionary of one)"
    expected = {c: (is_string_like, strings) for c in _STRING_COLUMNS}
    expected["image"] = (is_binary_like, "binary (or large_binary, binary_view, or a dictionary of one)")
    expected["captured_at"] = (pa.types.is_timestamp, "timestamp")
    expected["width"] = expected["height"] = (pa.types.is_integer, "integer")
    for column, (check, wanted_type) in expected.items():
        if column in schema.names and pa.types.is_null(schema.field(column).type) and column in _NULLABLE_TYPES:
            continue  # all values missing: read as nulls of the column's type (plain_schema)
        if column in schema.names and not check(schema.field(column).type):
            raise PoolSchemaError(
                f"{display}: column '{column}' has type {schema.field(column).type}, expected {wanted_type}: "
                f"{_SCHEMA_HINT}"
            )


def row_filter(schema: pa.Schema, pool: PoolConfig) -> ds.Expression | None:
    """Source and time filters as a dataset expression, so Parquet statistics can skip row groups."""
    terms: list[ds.Expression] = []
    if pool.sources and "source" in schema.names:  # else the source is the file's partition, checked whole
        source = ds.field("source")
        if not pa.types.is_string(schema.field("source").type):
            # The file is read as plain strings, but row-group statistics keep the stored encoding, and
            # pyarrow 25 cannot compare a string_view statistic with a string literal. A (no-op) cast
            # keeps the filter off the statistics: correct, at the price of no row-group skipping.
            source = source.cast(pa.string())
        terms.append(source.isin(pool.sources))
    if pool.captured_after or pool.captured_before:
        column_type = schema.field("captured_at").type

        def bound(moment: datetime) -> pa.Scalar:
            utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
            # Compare like with like: a naive column holds UTC wall times (the pool contract: captured_at is UTC).
            value = utc if column_type.tz is not None else utc.replace(tzinfo=None)
            return pa.scalar(value, type=pa.timestamp("us", tz=column_type.tz))

        if pool.captured_after:
            terms.append(ds.field("captured_at") >= bound(pool.captured_after))
        if pool.captured_before:
            terms.append(ds.field("captured_at") < bound(pool.captured_before))
    expression = None
    for term in terms:
        expression = term if expression is None else expression & term
    return expression


def iter_batches(
    pool_file: PoolFile, batch_rows: int, columns: tuple[str, ...] | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of the projected columns, holding a bounded number of row groups at once.

    pre_buffer would read every projected column chunk of the whole file up front, so memory
    would grow with file size (measured: 337 MiB peak for a 10k-row file, 424 MiB for 20k);
    without it, and with a readahead of one batch, a scan plateaus at ~290 MiB. Image
    validation, not Parquet decoding, dominates the time, so one scan thread is enough.
    """
    if pool_file.rows == 0:
        return  # nothing matches (or the partition is filtered out): do not even open the file
    yield from pool_file.dataset.to_batches(
        columns=list(columns or pool_file.columns),
        filter=pool_file.filter,
        batch_size=batch_rows,
        batch_readahead=1,
        fragment_readahead=1,
        use_threads=False,
        fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
    )


def sample_rank(candidate_id: str, seed: int) -> int:
    """Stable pseudo-random rank of an id under a seed (128 bits: distinct ids never tie in practice)."""
    digest = hashlib.blake2b(f"{seed}\0{candidate_id}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big")


def subset_threshold(files: list[PoolFile], pool: PoolConfig) -> int | None:
    """The largest rank kept by a bottom-k sample of `subset_size` distinct ids.

    Bottom-k on a seeded hash picks the same ids whatever the file layout, and needs only
    the id column and O(k) memory. None when the filtered pool is no larger than k.
    """
    k = pool.subset_size
    if k is None or sum(f.rows for f in files) <= k:
        return None
    heap: list[int] = []  # the k smallest ranks, negated: heapq is a min-heap
    kept: set[int] = set()  # a duplicate id has the same rank and must not take two places
    for pool_file in files:
        for batch in iter_batches(pool_file, 65_536, columns=("id",)):
            for candidate_id in batch.column("id").to_pylist():
                if candidate_id is None:
                    continue
                rank = sample_rank(candidate_id, pool.subset_seed)
                if rank in kept:
                    continue
                if len(heap) < k:
                    heapq.heappush(heap, -rank)
                    kept.add(rank)
                elif rank < -heap[0]:
                    kept.discard(-heapq.heappushpop(heap, -rank))
                    kept.add(rank)
    return -heap[0] if heap else None
