"""Fetch the images of chosen candidates again, by id, in the caller's order.

Scoring streams the pool and keeps no images; PTQ needs just the K selected ones, so the
pool is streamed once more (same config, so the same subset) and only those are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.config import PoolConfig, RuntimeEnv
from tasks.errors import TailcalError

from .models import IngestReport
from .stream import iter_candidate_batches


def collect_images(pool: PoolConfig, env: RuntimeEnv, ids: Sequence[str]) -> list[bytes]:
    """Image bytes for `ids`, in that order; stops reading once every id is found."""
    wanted = set(ids)
    found: dict[str, bytes] = {}
    for batch in iter_candidate_batches(pool, env, IngestReport()):
        for candidate in batch:
            if candidate.id in wanted:
                found[candidate.id] = candidate.image
        if len(found) == len(wanted):
            break
    missing = [i for i in ids if i not in found]
    if missing:
        raise TailcalError(
            f"{len(missing)} selected candidate(s) are no longer in pool {pool.uri!r} (e.g. {missing[:3]}): "
            "the pool changed since scoring; rerun the release cycle"
        )
    return [found[i] for i in ids]
