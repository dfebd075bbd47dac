"""Which Parquet files make up a pool folder, and what their paths say about their rows.

Real writers leave more than data beside a pool's Parquet: Spark its `_SUCCESS` marker,
`.crc` checksums and, after a failed or speculative task, whole stale copies under
`_temporary/`; table formats their logs. The rules, decided here once for local paths and
S3 alike:

- Plain folder: every `*.parquet` file under the root, except those with any path
  component (below the root) starting with `_` or `.` — the rule Arrow datasets, Spark and
  Hive follow, so `_temporary/`, `_SUCCESS`, `.crc` and `.trash/` never reach the pool.
- Hive partitions: a folder named `key=value` (percent-decoded; `__HIVE_DEFAULT_PARTITION__`
  is null) sets `key` for every row below it when `key` is one of the string metadata
  columns (class_hint, condition, source), as a string, so a partitioned pool has the same
  candidates and digest as one flat file. Other keys are ignored, like unknown columns; a
  path key that the pipeline needs typed or unique (id, image, image_uri, captured_at) is
  refused.
- Delta Lake (`_delta_log/` at the root): the active files are replayed from the JSON
  commits, so files a later commit removed (still on disk until VACUUM) stay out of the
  pool; partition values come from the log. Logs that cannot be replayed exactly from
  JSON — commits cleaned up after a checkpoint, deletion vectors, column mapping, reader
  features not understood here — are refused, naming the fix, never guessed at.
- Iceberg and Hudi tables are refused: their folders keep rows later snapshots deleted
  or replaced, and reading them right needs their metadata (Avro manifests, timeline).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from tasks.errors import PoolAccessError, PoolSchemaError

from .storage import PoolLocation, access_hint, list_tree

logger = logging.getLogger(__name__)

IGNORED_PREFIXES = ("_", ".")
# Metadata columns a partition path or a Delta log may supply: strings, as in a flat file.
PARTITION_COLUMNS = ("class_hint", "condition", "source")
# Columns a path cannot supply: unique per row, bytes, or typed (a path holds text only).
_UNPARTITIONABLE = ("id", "image", "image_uri", "captured_at")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

_DELTA_LOG = "_delta_log"
_DELTA_COMMIT = re.compile(r"^(\d{20})\.json$")
_DELTA_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\b.*\.(parquet|json)$")
# Reader features whose data a JSON replay plus a plain Parquet read gets exactly right; each
# is checked further below where it matters (column mapping mode, deletion vectors in use).
_DELTA_READER_FEATURES = {"timestampNtz", "columnMapping", "deletionVectors", "v2Checkpoint", "vacuumProtocolCheck"}
_EXPORT_FIX = (
    "export the table's current snapshot to plain Parquet (e.g. in Spark: "
    "spark.read.format(...).load(path).write.parquet(out)) and point tailcal at that folder"
)


@dataclass(frozen=True)
class PoolPart:
    """One Parquet file of the pool and the metadata values its location gives every row in it."""

    path: str
    partitions: Mapping[str, str | None] = field(default_factory=dict)  # column → value (PARTITION_COLUMNS only)
    origin: str = ""  # where the partition values come from, for skip reasons: a folder or the Delta log


@dataclass(frozen=True)
class PoolLayout:
    """The files that make up the pool, in read order, and what kind of layout held them."""

    parts: list[PoolPart]
    kind: str  # "file", "folder", "hive" or "delta v<N>": for logs
    not_read: list[str] = field(default_factory=list)  # files that may be Parquet under another name


def discover(location: PoolLocation) -> PoolLayout:
    """The pool's files at `location` under the rules in this module's docstring.

    Raises PoolSchemaError for a layout that cannot be read as a pool without guessing
    (a nested or unreadable Delta table, Iceberg, Hudi, a refused partition key), and
    PoolAccessError when the store or a Delta commit cannot be read.
    """
    paths = list_tree(location)
    if paths == [location.root]:
        parts = [PoolPart(location.root)] if location.root.endswith(".parquet") else []
        return PoolLayout(parts, "file")
    relative = {path: _relative(path, location.root) for path in paths}
    _refuse_foreign_tables(location, relative)
    if any(rel.startswith(f"{_DELTA_LOG}/") for rel in relative.values()):
        return _delta_layout(location, relative)
    parts, maybe_parquet = [], []
    for path, rel in relative.items():
        components = rel.split("/")
        if _ignored(components):
            continue
        if not components[-1].endswith(".parquet"):
            if _looks_like_data(components[-1]):
                maybe_parquet.append(rel)
            continue
        partitions, origin = _hive_partitions(components[:-1], location.display(path))
        parts.append(PoolPart(path, partitions, origin))
    if maybe_parquet:
        # Hive and Impala write data files without an extension (000000_0); reading them
        # unasked could read anything, skipping them unsaid loses rows: say so.
        logger.warning(
            "pool %s: %d file(s) without the .parquet extension were not read (e.g. %s); "
            "rename them *.parquet if they belong to the pool",
            location.uri,
            len(maybe_parquet),
            ", ".join(maybe_parquet[:3]),
        )
    kind = "hive" if any(p.origin for p in parts) else "folder"
    return PoolLayout(parts, kind, maybe_parquet)


def _looks_like_data(name: str) -> bool:
    """A file name that may hold Parquet under another name: no extension, or .parq/.pq/.PARQUET."""
    suffix = posixpath.splitext(name)[1].lower()
    return suffix in ("", ".parq", ".pq", ".parquet")


def _relative(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/") if path.startswith(root) else path


def _ignored(components: list[str]) -> bool:
    return any(c.startswith(IGNORED_PREFIXES) for c in components)


def _visible_prefix(components: list[str]) -> tuple[list[str], str | None]:
    """The components before the first ignored one, and that ignored component (None if none)."""
    for index, component in enumerate(components):
        if component.startswith(IGNORED_PREFIXES):
            return components[:index], component
    return components, None


def _refuse_foreign_tables(location: PoolLocation, relative: Mapping[str, str]) -> None:
    """Refuse table layouts whose folders hold rows the table no longer contains."""
    for rel in relative.values():
        components = rel.split("/")
        visible, hidden = _visible_prefix(components)
        where = location.display(posixpath.join(location.root, *visible)) if visible else location.uri
        if hidden == _DELTA_LOG and visible:
            raise PoolSchemaError(
                f"pool {location.uri!r} holds a Delta table at {where!r} (its _delta_log/ is not at the pool root): "
                "reading its folder as plain Parquet would bring back rows the table deleted; "
                f"point {location.setting} at the table folder itself, one table per pool"
            )
        if hidden == ".hoodie":
            raise PoolSchemaError(
                f"pool {location.uri!r} holds an Apache Hudi table at {where!r} (.hoodie/): its folders keep "
                "older versions of rows, which tailcal cannot tell from current ones; " + _EXPORT_FIX
            )
        if hidden is None and _iceberg_metadata(components):
            table = (
                location.display(posixpath.join(location.root, *components[:-2]))
                if len(components) > 2
                else location.uri
            )
            raise PoolSchemaError(
                f"pool {location.uri!r} holds an Apache Iceberg table at {table!r} (metadata/{components[-1]}): "
                "its data folder keeps rows that later snapshots deleted or replaced, and its delete files "
                "need Iceberg's manifests to apply; " + _EXPORT_FIX
            )


def _iceberg_metadata(components: list[str]) -> bool:
    """An Iceberg table's metadata file: metadata/<n>-<uuid>.metadata.json or metadata/version-hint.text."""
    return (
        len(components) >= 2
        and components[-2] == "metadata"
        and (components[-1].endswith(".metadata.json") or components[-1] == "version-hint.text")
    )


def _hive_partitions(folders: list[str], display: str) -> tuple[dict[str, str | None], str]:
    """Metadata values set by `key=value` folders above a file, and the folders as an origin text."""
    found: dict[str, str | None] = {}
    named: list[str] = []
    for folder in folders:
        key, sep, raw = folder.partition("=")
        if not sep or not key:
            continue  # a plain subfolder (e.g. 2026/01/) says nothing about the rows
        key = unquote(key)
        value = None if raw == HIVE_NULL else unquote(raw)
        if key in found and found[key] != value:
            raise PoolSchemaError(
                f"{display}: its folders give partition key '{key}' two values ({found[key]!r} and {value!r}): "
                "move the file under one key=value folder"
            )
        found[key] = value
        named.append(folder)
    partitions = _partition_columns(found, display, "its folder")
    return partitions, ("the folder " + "/".join(named) if partitions else "")


def _partition_columns(values: Mapping[str, str | None], display: str, where: str) -> dict[str, str | None]:
    for key in values:
        if key in _UNPARTITIONABLE:
            raise PoolSchemaError(
                f"{display}: {where} partitions on '{key}', which ingest cannot take from a path "
                f"(it must be per-row{' and typed' if key == 'captured_at' else ''}): write '{key}' into the "
                "Parquet files and partition on another column"
            )
    ignored = sorted(k for k in values if k not in PARTITION_COLUMNS)
    if ignored:
        logger.debug("%s: partition keys %s are not pool columns; ignored", display, ignored)
    return {k: v for k, v in values.items() if k in PARTITION_COLUMNS}


# --- Delta Lake ---


def _delta_layout(location: PoolLocation, relative: Mapping[str, str]) -> PoolLayout:
    log_display = location.display(posixpath.join(location.root, _DELTA_LOG))
    commits: dict[int, str] = {}
    checkpoints: list[int] = []
    for path, rel in relative.items():
        folder, _, name = rel.rpartition("/")
        if folder != _DELTA_LOG:
            continue
        if match := _DELTA_COMMIT.match(name):
            commits[int(match.group(1))] = path
        elif match := _DELTA_CHECKPOINT.match(name):
            checkpoints.append(int(match.group(1)))
    if not commits:
        raise PoolSchemaError(
            f"{log_display} has no JSON commits"
            + (f" (only checkpoints, latest version {max(checkpoints)})" if checkpoints else "")
            + ": tailcal replays a Delta table from its JSON commits and cannot read this log; "
            + _EXPORT_FIX
        )
    versions = sorted(commits)
    if versions[0] != 0:
        raise PoolSchemaError(
            f"{log_display} starts at version {versions[0]}: older commits were cleaned up after a checkpoint, "
            "and tailcal reads the table only by replaying every JSON commit from version 0 "
            "(checkpoints are not read); " + _EXPORT_FIX
        )
    missing = sorted(set(range(versions[-1] + 1)) - set(versions))
    if missing:
        raise PoolSchemaError(
            f"{log_display} lacks commit(s) {missing[:5]} between 0 and {versions[-1]}: the log is incomplete "
            "or still being copied; finish the copy, or " + _EXPORT_FIX
        )
    active: dict[str, dict] = {}
    protocol: dict | None = None
    metadata: dict | None = None
    for version in versions:
        for action in _delta_actions(location, commits[version]):
            if add := action.get("add"):
                active[_action_path(add, commits[version], location)] = add
            elif remove := action.get("remove"):
                active.pop(_action_path(remove, commits[version], location), None)
            elif "protocol" in action:
                protocol = action["protocol"]
            elif "metaData" in action:
                metadata = action["metaData"]
    _check_delta_protocol(protocol, metadata, log_display)
    listed = set(relative.values())
    parts = []
    for raw_path, add in sorted(active.items()):
        display = location.display(posixpath.join(location.root, raw_path))
        if "://" in raw_path or raw_path.startswith("/"):
            raise PoolSchemaError(
                f"{log_display}: active file {raw_path!r} lies outside the table folder (a shallow clone?): "
                "tailcal reads only files inside the table; " + _EXPORT_FIX
            )
        if add.get("deletionVector"):
            raise PoolSchemaError(
                f"{log_display}: active file {display} has a deletion vector (rows deleted without rewriting "
                "the file), which tailcal cannot apply: purge them (Spark/Databricks: "
                "REORG TABLE ... APPLY (PURGE)) or " + _EXPORT_FIX
            )
        if raw_path not in listed:
            raise PoolSchemaError(
                f"{log_display}: active file {display} is missing from the table folder: the table was "
                "vacuumed or copied incompletely; restore the file, repair the table (FSCK REPAIR TABLE), "
                "or " + _EXPORT_FIX
            )
        values = {k: (v if v != "" else None) for k, v in (add.get("partitionValues") or {}).items()}
        partitions = _partition_columns(values, display, "the Delta table")
        parts.append(PoolPart(posixpath.join(location.root, raw_path), partitions, "the Delta log"))
    stale = sum(
        1
        for rel in relative.values()
        if rel.endswith(".parquet") and rel not in active and not _ignored(rel.split("/"))
    )
    if stale:
        logger.info(
            "%s: %d Parquet file(s) in the folder are not in the table (removed, not yet vacuumed)", log_display, stale
        )
    return PoolLayout(parts, f"delta v{versions[-1]}")


def _delta_actions(location: PoolLocation, path: str) -> Iterator[dict]:
    """The actions of one commit file, one JSON object a line, read as a stream."""
    display = location.display(path)
    line_number = 0
    try:
        with location.filesystem.open_input_stream(path) as stream:
            for line in io.TextIOWrapper(stream, encoding="utf-8"):
                line_number += 1
                if not line.strip():
                    continue
                action = json.loads(line)
                if not isinstance(action, dict):
                    raise ValueError("not a JSON object")
                yield action
    except OSError as exc:
        raise PoolAccessError(f"could not read Delta commit {display}: {exc}. {access_hint(location)}") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PoolSchemaError(
            f"{display} near line {max(line_number, 1)} is not a Delta action ({exc}): the commit is damaged "
            "or was copied while being written; copy the table again"
        ) from exc


def _action_path(action: object, commit: str, location: PoolLocation) -> str:
    """The file an add or remove action names, decoded (log paths are URI-encoded)."""
    path = action.get("path") if isinstance(action, dict) else None
    if not isinstance(path, str) or not path:
        raise PoolSchemaError(
            f"{location.display(commit)}: an add/remove action names no file path: the commit is damaged; "
            "copy the table again"
        )
    return unquote(path)


def _check_delta_protocol(protocol: dict | None, metadata: dict | None, log_display: str) -> None:
    if protocol is None or metadata is None:
        raise PoolSchemaError(
            f"{log_display}: the commits hold no {'protocol' if protocol is None else 'metaData'} action, "
            "so this is not a complete Delta log; copy the whole table folder, or " + _EXPORT_FIX
        )
    reader = int(protocol.get("minReaderVersion", 1))
    features = set(protocol.get("readerFeatures") or [])
    unknown = sorted(features - _DELTA_READER_FEATURES)
    if reader > 3 or unknown:
        raise PoolSchemaError(
            f"{log_display}: the table needs reader version {reader}"
            + (f" with features {unknown}" if unknown else "")
            + ", which tailcal does not implement (reading it as plain Parquet could return rows the table "
            "no longer holds); " + _EXPORT_FIX
        )
    mode = (metadata.get("configuration") or {}).get("delta.columnMapping.mode", "none")
    if mode != "none":
        raise PoolSchemaError(
            f"{log_display}: the table uses column mapping (delta.columnMapping.mode={mode}), so its Parquet "
            "column names are not the table's; " + _EXPORT_FIX
        )
    provider = (metadata.get("format") or {}).get("provider", "parquet")
    if provider != "parquet":
        raise PoolSchemaError(f"{log_display}: data files are {provider!r}, not Parquet; " + _EXPORT_FIX)
