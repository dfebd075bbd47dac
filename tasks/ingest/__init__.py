"""Ingest: stream the candidate pool (Parquet on S3 or a local path) as batches of validated candidates.

report = IngestReport()
for batch in iter_candidate_batches(config.pool, RuntimeEnv(), report):
    ...  # score the batch
report.pool_digest  # set once the stream is exhausted
"""

from .collect import collect_images
from .models import Candidate, IngestReport, PoolDigest, Skipped
from .stream import iter_candidate_batches

__all__ = ["Candidate", "IngestReport", "PoolDigest", "Skipped", "collect_images", "iter_candidate_batches"]
