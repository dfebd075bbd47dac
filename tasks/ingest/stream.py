"""Stream a candidate pool as batches of validated candidates, never holding the whole pool."""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pyarrow as pa

from tasks.config import PoolConfig, RuntimeEnv
from tasks.errors import ConfigError, EmptyPoolError

from .images import check_image
from .layout import discover
from .models import Candidate, IngestReport, PoolDigest, Skipped
from .scan import PoolFile, iter_batches, open_pool_file, sample_rank, subset_threshold
from .storage import (
    Filesystems,
    ObjectTooLarge,
    PoolLocation,
    read_object,
    resolve_image_uri,
    resolve_pool,
    with_retries,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Row:
    id: str
    image: bytes | None
    image_uri: str | None
    condition: str | None
    class_hint: str | None
    source: str | None
    captured_at: datetime | None
    conflict: str | None = None  # the file and its partition path (or Delta log) disagree on a metadata value


def iter_candidate_batches(
    pool: PoolConfig, env: RuntimeEnv, report: IngestReport, setting: str = "pool.uri"
) -> Iterator[list[Candidate]]:
    """Batches of up to `pool.batch_rows` validated candidates from the Parquet pool at `pool.uri`.

    `pool.uri` is `s3://bucket/prefix/` or a local path: one file, a folder of `*.parquet`
    files (paths with a component starting `_` or `.` are ignored; `key=value` folders set
    metadata), or a Delta table (see layout.py). Schema problems and an empty pool raise
    here, before the first batch is asked for; bad images are skipped and recorded in
    `report`, whose `pool_digest` is set once the iterator is exhausted.

    Raises PoolSchemaError (a required or filtered column is missing or mistyped; the file
    is named), EmptyPoolError (no Parquet files, no rows after filters, or every row
    skipped) and PoolAccessError (the store cannot be listed); their messages name `setting`,
    the setting that named `pool.uri` (the drift monitor reads production frames through this).
    """
    uri = pool.uri
    if not uri:
        raise ConfigError(f"{setting} is not set: name the Parquet path or s3:// prefix")
    filesystems = Filesystems(env)
    location = resolve_pool(uri, filesystems, setting)
    report.uri = uri
    layout = discover(location)
    if not layout.parts:
        raise EmptyPoolError(
            f"no *.parquet files under {setting} {uri!r}"
            + (" in the Delta table's current version" if layout.kind.startswith("delta") else "")
            + (
                f" (files without the .parquet extension, e.g. {layout.not_read[:2]}, are not read: rename them)"
                if layout.not_read
                else ""
            )
            + f": check {setting} (bucket, prefix or path) and that the frames were written there "
            "(paths with a folder or name starting with '_' or '.' are ignored)"
        )
    if layout.kind == "file":
        location = replace(location, image_base=posixpath.dirname(location.root))
    files = [open_pool_file(part, location, pool) for part in layout.parts]
    report.files = len(files)
    report.rows_matched = sum(f.rows for f in files)
    if report.rows_matched == 0:
        fix = "loosen pool filters or check the data" if _filters_text(pool) else "check the data written there"
        raise EmptyPoolError(f"{setting} {uri!r} has no rows{_filters_text(pool)}: {fix}")
    threshold = subset_threshold(files, pool)
    report.rows_expected = report.rows_matched if threshold is None else pool.subset_size
    logger.info(
        "ingesting %s (%s): %d file(s), %d row(s) after filters%s",
        uri,
        layout.kind,
        len(files),
        report.rows_matched,
        f", sampling {pool.subset_size} (seed {pool.subset_seed})" if threshold is not None else "",
    )
    return _stream(files, location, filesystems, pool, report, threshold)


def _stream(
    files: list[PoolFile],
    location: PoolLocation,
    filesystems: Filesystems,
    pool: PoolConfig,
    report: IngestReport,
    threshold: int | None,
) -> Iterator[list[Candidate]]:
    seen: set[str] = set()  # grows with the pool (ids only): the price of catching duplicates
    digest = PoolDigest()
    pending: list[Candidate] = []

    def materialise(rows: list[_Row]) -> list[Candidate | Skipped]:
        return [_materialise(row, location, filesystems, pool) for row in rows]

    with ThreadPoolExecutor(max_workers=pool.fetch_concurrency, thread_name_prefix="ingest-fetch") as executor:
        for pool_file in files:
            if pool_file.rows == 0:
                continue
            offset = 0  # row number within the file's filtered rows, to point at null ids
            for record_batch in iter_batches(pool_file, pool.batch_rows):
                todo: list[_Row] = []
                for row_index, row in enumerate(
                    _rows(record_batch, pool_file.partitions, pool_file.origin), start=offset
                ):
                    if threshold is not None and not _sampled(row.id, pool.subset_seed, threshold):
                        continue
                    report.rows_seen += 1
                    if row.id is None:
                        _skip(report, Skipped(f"<null id in {pool_file.display}>", f"row {row_index}: id is null"))
                    elif row.id in seen:
                        _skip(report, Skipped(row.id, "duplicate id"))
                    else:
                        seen.add(row.id)
                        if row.conflict is not None:
                            _skip(report, Skipped(row.id, row.conflict))
                        else:
                            todo.append(row)
                offset += record_batch.num_rows
                # A task per row costs the main thread more than validating an inline image, so
                # rows go out in chunks; twice as many chunks as workers keeps all of them busy
                # (and, for image URIs, fetch_concurrency reads in flight). map keeps input
                # order, so the stream order and the skip list are deterministic.
                for outcomes in executor.map(materialise, _chunks(todo, 2 * pool.fetch_concurrency)):
                    for outcome in outcomes:
                        if isinstance(outcome, Skipped):
                            _skip(report, outcome)
                            continue
                        digest.add(outcome)
                        report.candidates += 1
                        pending.append(outcome)
                while len(pending) >= pool.batch_rows:
                    batch, pending = pending[: pool.batch_rows], pending[pool.batch_rows :]
                    yield batch
    if pending:
        yield pending
    if report.candidates == 0:
        raise EmptyPoolError(
            f"pool {report.uri!r}: all {report.rows_seen} row(s) were skipped, no candidates left; "
            f"first reasons: {[s.reason for s in report.skipped[:3]]}"
        )
    report.pool_digest = digest.hexdigest()
    logger.info("ingested %s; pool digest %s", report.summary(), report.pool_digest)


def _chunks(rows: list[_Row], count: int) -> list[list[_Row]]:
    size = max(1, -(-len(rows) // count))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _sampled(candidate_id: str | None, seed: int, threshold: int) -> bool:
    # Null ids stay in the stream so they are reported, not silently sampled away.
    return candidate_id is None or sample_rank(candidate_id, seed) <= threshold


def _rows(batch: pa.RecordBatch, partitions: Mapping[str, str | None], origin: str) -> Iterator[_Row]:
    """The batch's rows; a metadata column the file lacks takes its partition value (from the
    path or the Delta log), and a row whose own value disagrees with it carries a conflict."""
    names = batch.schema.names
    conflicts: list[str | None] = [None] * batch.num_rows

    def column(name: str) -> list:
        if name in names:
            values = batch.column(name).to_pylist()
            if name in partitions:
                wanted = partitions[name]
                for i, value in enumerate(values):
                    if value != wanted and conflicts[i] is None:
                        conflicts[i] = (
                            f"{name} is {value!r} in the file but {wanted!r} in {origin}: "
                            "fix the value or move the file under the matching partition"
                        )
            return values
        if name in partitions:
            return [partitions[name]] * batch.num_rows
        return [None] * batch.num_rows

    ids, images, uris = column("id"), column("image"), column("image_uri")
    conditions, hints, sources, times = (
        column("condition"),
        column("class_hint"),
        column("source"),
        column("captured_at"),
    )
    for i in range(batch.num_rows):
        yield _Row(
            ids[i], images[i], uris[i] or None, conditions[i], hints[i], sources[i], _utc(times[i]), conflicts[i]
        )


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    # A naive timestamp column holds UTC wall times (the pool contract: captured_at is UTC).
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _materialise(row: _Row, location: PoolLocation, filesystems: Filesystems, pool: PoolConfig) -> Candidate | Skipped:
    """Fetch (for image_uri) and validate one row; every expected failure becomes a Skipped."""
    if row.image is not None:
        data, where = row.image, "inline image"
    elif row.image_uri is not None:
        filesystem, path = resolve_image_uri(row.image_uri, location, filesystems)
        where = row.image_uri
        try:
            data = with_retries(
                lambda: read_object(filesystem, path, pool.max_image_bytes), pool.fetch_retries, what=where
            )
        except FileNotFoundError:
            return Skipped(row.id, f"missing object: {where} does not exist")
        except ObjectTooLarge as exc:
            return Skipped(row.id, f"{where}: {exc}")
        except OSError as exc:
            return Skipped(row.id, f"unreadable object {where} after {pool.fetch_retries} retries: {exc}")
    else:
        return Skipped(row.id, "no image: both image and image_uri are null")
    if len(data) > pool.max_image_bytes:
        return Skipped(row.id, f"{where}: object is larger than max_image_bytes={pool.max_image_bytes}")
    check = check_image(data, pool.max_image_pixels)
    if check.error is not None:
        return Skipped(row.id, f"{check.error} ({where})")
    return Candidate(
        id=row.id,
        image=data,
        digest=hashlib.sha256(data).hexdigest(),
        width=check.width,
        height=check.height,
        condition=row.condition,
        class_hint=row.class_hint,
        source=row.source,
        captured_at=row.captured_at,
        image_uri=row.image_uri if row.image is None else None,
    )


def _skip(report: IngestReport, skipped: Skipped) -> None:
    report.skipped.append(skipped)
    logger.warning("skipped candidate %s: %s", skipped.id, skipped.reason)


def _filters_text(pool: PoolConfig) -> str:
    parts = []
    if pool.sources:
        parts.append(f"sources={pool.sources}")
    if pool.captured_after:
        parts.append(f"captured_after={pool.captured_after.isoformat()}")
    if pool.captured_before:
        parts.append(f"captured_before={pool.captured_before.isoformat()}")
    return f" after filters ({', '.join(parts)})" if parts else ""
