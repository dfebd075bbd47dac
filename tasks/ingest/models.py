"""What ingest hands downstream: candidates in batches, and a report of what it read and skipped."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime

_MOD = 2**256


@dataclass(frozen=True, slots=True)
class Candidate:
    """One validated candidate image and its metadata; `image` holds the original encoded bytes."""

    id: str
    image: bytes
    digest: str  # sha256 of `image`, hex
    width: int
    height: int
    condition: str | None = None
    class_hint: str | None = None
    source: str | None = None
    captured_at: datetime | None = None  # UTC, timezone-aware
    image_uri: str | None = None  # where the bytes came from; None for inline images


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row that did not become a candidate, and why."""

    id: str
    reason: str


@dataclass
class IngestReport:
    """Filled in while the pool streams; `pool_digest` is set once the stream is exhausted."""

    uri: str = ""
    files: int = 0
    rows_matched: int = 0  # rows passing the source/time filters, before any subset sample
    rows_expected: int = 0  # rows the stream will read: rows_matched, or the subset sample's size
    rows_seen: int = 0  # rows read after filters and subset sample
    candidates: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    pool_digest: str | None = None

    @property
    def complete(self) -> bool:
        return self.pool_digest is not None

    def summary(self) -> str:
        return (
            f"{self.uri}: {self.files} file(s), {self.rows_matched} row(s) matched filters, "
            f"{self.rows_seen} read, {self.candidates} candidate(s), {len(self.skipped)} skipped"
        )


class PoolDigest:
    """Digest of a set of candidates that does not depend on file layout or row order.

    Each candidate's fingerprint (id, image digest, metadata) is hashed and the hashes are
    summed mod 2**256, so re-partitioning the same pool, or reading it from S3 instead of a
    local copy, gives the same digest in constant memory while streaming.
    """

    def __init__(self) -> None:
        self._sum = 0
        self._count = 0

    def add(self, candidate: Candidate) -> None:
        captured = candidate.captured_at.isoformat() if candidate.captured_at else None
        fields = [
            candidate.id,
            candidate.digest,
            candidate.condition,
            candidate.class_hint,
            candidate.source,
            captured,
        ]
        fingerprint = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).digest()
        self._sum = (self._sum + int.from_bytes(fingerprint, "big")) % _MOD
        self._count += 1

    def hexdigest(self) -> str:
        payload = b"tailcal-pool-v1\0" + str(self._count).encode() + b"\0" + self._sum.to_bytes(32, "big")
        return hashlib.sha256(payload).hexdigest()
