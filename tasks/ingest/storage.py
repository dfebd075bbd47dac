"""Where the pool lives: one URI (s3://bucket/prefix/ or a local path) → a pyarrow filesystem.

S3 goes through `pyarrow.fs.S3FileSystem`, which takes credentials from the standard AWS
chain (env vars, profile, instance role) and an optional endpoint override for
S3-compatible stores (TAILCAL_S3_ENDPOINT). Image URIs are read through the same
filesystems, so a pool on S3 with images on S3 needs one set of credentials.
"""

from __future__ import annotations

import logging
import posixpath
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from tasks.config import RuntimeEnv
from tasks.errors import EmptyPoolError, PoolAccessError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors retrying cannot fix: the object is absent or we may not read it.
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


@dataclass(frozen=True)
class PoolLocation:
    """A pool URI resolved to a filesystem and a root path inside it."""

    uri: str
    filesystem: pafs.FileSystem
    root: str  # bucket/prefix on S3, an absolute path locally
    scheme: str  # "s3" or "file"
    image_base: str  # relative image_uri values resolve from here: the root, or a single file's folder
    setting: str = "pool.uri"  # the setting that named the location, for messages

    def display(self, path: str) -> str:
        """A path inside this filesystem, written the way a user would type it."""
        return f"s3://{path}" if self.scheme == "s3" else path


class Filesystems:
    """Lazily built filesystems, shared by the pool scan and image fetches (both are thread-safe)."""

    def __init__(self, env: RuntimeEnv) -> None:
        self._env = env
        self._s3: pafs.S3FileSystem | None = None
        self._lock = threading.Lock()  # fetch threads may ask for the S3 filesystem first
        self._local = pafs.LocalFileSystem()

    @property
    def s3(self) -> pafs.S3FileSystem:
        with self._lock:
            if self._s3 is None:
                self._s3 = s3_filesystem(self._env)
            return self._s3

    def split(self, uri: str) -> tuple[pafs.FileSystem, str, str]:
        """(filesystem, path inside it, scheme) for an s3:// URI, a file:// URI or a local path."""
        if uri.startswith("s3://"):
            return self.s3, uri.removeprefix("s3://").strip("/"), "s3"
        if uri.startswith("file://"):
            uri = uri.removeprefix("file://")
        return self._local, str(Path(uri).expanduser().resolve()), "file"


def s3_filesystem(env: RuntimeEnv) -> pafs.S3FileSystem:
    """An S3 filesystem on the standard AWS credential chain, with the endpoint override if set."""
    kwargs: dict[str, str] = {}
    if endpoint := env.tailcal_s3_endpoint:
        scheme, sep, host = endpoint.partition("://")
        kwargs = {"endpoint_override": host, "scheme": scheme} if sep else {"endpoint_override": endpoint}
    return pafs.S3FileSystem(**kwargs)


def resolve_pool(uri: str, filesystems: Filesystems, setting: str = "pool.uri") -> PoolLocation:
    """`uri` resolved to its filesystem and root; `setting` names where it came from in messages."""
    filesystem, root, scheme = filesystems.split(uri)
    if scheme == "s3" and not root:
        raise EmptyPoolError(f"{setting} {uri!r} names no bucket: use s3://bucket/prefix/")
    return PoolLocation(uri=uri, filesystem=filesystem, root=root, scheme=scheme, image_base=root, setting=setting)


def list_tree(location: PoolLocation) -> list[str]:
    """Every file under the root, sorted and unfiltered (`[root]` when the root is a single file).

    Which of them make up the pool (hidden and `_`-prefixed paths, Hive partitions, a Delta
    log) is decided in `layout.py`, which needs to see the metadata files to decide.
    """
    try:
        info = location.filesystem.get_file_info(location.root)
        if info.type == pafs.FileType.File:
            # A single file: PoolLocation.image_base is moved to its folder by the caller.
            return [location.root]
        if info.type == pafs.FileType.NotFound and location.scheme == "file":
            raise EmptyPoolError(
                f"path {location.uri!r} does not exist: check {location.setting}"
                + (" or generate the pool" if location.setting == "pool.uri" else "")
            )
        selector = pafs.FileSelector(location.root, recursive=True, allow_not_found=True)
        infos = location.filesystem.get_file_info(selector)
    except OSError as exc:
        raise PoolAccessError(f"could not list pool {location.uri!r}: {exc}. {access_hint(location)}") from exc
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def access_hint(location: PoolLocation) -> str:
    """What to check when the pool's store cannot be listed or read."""
    if location.scheme == "s3":
        return (
            "Check the bucket and prefix, the AWS credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE) "
            "and TAILCAL_S3_ENDPOINT for S3-compatible stores"
        )
    return "Check the path and its permissions"


def resolve_image_uri(image_uri: str, location: PoolLocation, filesystems: Filesystems) -> tuple[pafs.FileSystem, str]:
    """An s3:// URI, a file:// URI or an absolute path as given; a relative path is taken relative to
    the pool root (the URI's folder), on the pool's own filesystem, so a pool and its images move together."""
    if image_uri.startswith(("s3://", "file://", "/", "~")):
        filesystem, path, _ = filesystems.split(image_uri)
        return filesystem, path
    return location.filesystem, posixpath.normpath(posixpath.join(location.image_base, image_uri))


def read_object(filesystem: pafs.FileSystem, path: str, max_bytes: int) -> bytes:
    """The whole object, or ObjectTooLarge without reading past `max_bytes`."""
    with filesystem.open_input_stream(path) as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ObjectTooLarge(f"object is larger than max_image_bytes={max_bytes}")
    return data


class ObjectTooLarge(Exception):
    """An image object exceeds the configured byte limit (not retried)."""


def with_retries(
    call: Callable[[], T],
    retries: int,
    *,
    what: str,
    base_delay_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `call`, retrying transient OSErrors with exponential backoff and full jitter.

    Jitter keeps many fetch threads from retrying a throttled store in lockstep.
    """
    for attempt in range(retries + 1):
        try:
            return call()
        except _PERMANENT:
            raise
        except OSError as exc:
            if attempt == retries:
                raise
            delay = random.uniform(0, base_delay_s * 2**attempt)
            logger.info(
                "transient error reading %s (%s); retry %d/%d in %.2f s", what, exc, attempt + 1, retries, delay
            )
            sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
