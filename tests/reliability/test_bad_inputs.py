"""Scenario 5: bad inputs end as a clear error or a counted skip, and nothing else is lost.

Pool side: corrupt, truncated and zero-byte images, a 20k × 20k header (decompression bomb)
and a duplicate id are skipped with their reasons while every good row is ingested and then
scored; a wrong schema, an empty pool, K > pool and duplicate ids are clear errors.
Model side: a gateway that answers NaN, negative, over-1, string-typed or prose scores for
some images: those are recorded as failed with the reason after one more try, every other
candidate is scored, and the ledger books what was paid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import PoolConfig, RuntimeEnv
from tasks.errors import EmptyPoolError, PoolSchemaError, SelectionError
from tasks.ingest import IngestReport, iter_candidate_batches
from tasks.scoring.budget import to_nano
from tasks.scoring.passes import REPLY_ATTEMPTS, score_shard
from tasks.scoring.reference_scorer import ReferenceScorer
from tasks.selection import SelectionInput, select_calibration_set
from tests.integration.scoring.conftest import scoring_config
from tests.reliability.conftest import new_session, read_rows
from tests.unit.test_ingest import bomb_png, jpeg_bytes, truncated_jpeg

GOOD = 24


def _ingest(uri: Path) -> tuple[list, IngestReport]:
    report = IngestReport()
    batches = iter_candidate_batches(str(uri), PoolConfig(batch_rows=16), RuntimeEnv(), report)
    return [c for batch in batches for c in batch], report


def _write(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path.parent


def test_bad_images_are_counted_skips_and_every_good_candidate_is_scored(distinct_pool, redis_client, tmp_path):
    # given 24 good rows mixed with corrupt, truncated, empty, bomb and duplicate-id rows
    good = read_rows(distinct_pool)[:GOOD]
    bad = {
        "bad-corrupt": b"\xff\xd8\xff\xe0 not really a jpeg",
        "bad-truncated": truncated_jpeg(),
        "bad-empty": b"",
        "bad-bomb": bomb_png(20_000, 20_000),
        good[3].id: jpeg_bytes(),  # a duplicate id with a valid image
    }
    ids = [r.id for r in good[:12]] + list(bad) + [r.id for r in good[12:]]
    images = [r.image for r in good[:12]] + list(bad.values()) + [r.image for r in good[12:]]
    pool = _write(tmp_path / "pool" / "part-0.parquet", pa.table({"id": ids, "image": images}))
    # when the pool is ingested and the candidates scored
    candidates, report = _ingest(pool)
    with ReferenceScorer() as scorer:
        records = score_shard(new_session(scoring_config(), redis_client, scorer.base_url), candidates)
    # then each bad row is skipped with its reason and every good row is ingested and scored
    reasons = {s.id: s.reason for s in report.skipped}
    assert [c.id for c in candidates] == [r.id for r in good], f"all {GOOD} good rows kept, in order"
    assert sorted(reasons) == sorted(bad), f"exactly the 5 bad rows are skipped: {reasons}"
    assert reasons[good[3].id] == "duplicate id", reasons[good[3].id]
    assert reasons["bad-empty"].startswith("empty object (0 bytes)"), reasons["bad-empty"]
    assert reasons["bad-bomb"].startswith("decompression bomb guard"), reasons["bad-bomb"]
    for name in ("bad-corrupt", "bad-truncated"):
        assert reasons[name].startswith(("corrupt or truncated image", "not an image")), reasons[name]
    assert report.rows_seen == GOOD + len(bad) and report.candidates == GOOD, report.summary()
    assert Counter(r.status for r in records) == {"scored": GOOD}, f"{Counter(r.status for r in records)}"


@pytest.mark.parametrize(
    ("table", "column"),
    [
        (pa.table({"id": pa.array([1, 2], pa.int64()), "image": [jpeg_bytes(), jpeg_bytes()]}), "'id'"),
        (pa.table({"id": ["a", "b"], "image": ["not", "bytes"]}), "'image'"),
        (pa.table({"id": ["a", "b"], "pixels": [jpeg_bytes(), jpeg_bytes()]}), "'image'"),
        (pa.table({"name": ["a"], "image": [jpeg_bytes()]}), "'id'"),
    ],
    ids=["id-int64", "image-string", "no-image-column", "no-id-column"],
)
def test_wrong_parquet_schema_is_an_error_naming_the_column_and_file(table, column, tmp_path):
    # given a pool file whose schema breaks the contract
    pool = _write(tmp_path / "pool" / "part-0.parquet", table)
    # when it is ingested, then the error names the column and the file
    with pytest.raises(PoolSchemaError) as error:
        _ingest(pool)
    assert column in str(error.value) and "part-0.parquet" in str(error.value), f"unclear: {error.value}"


def test_empty_pools_are_clear_errors(tmp_path):
    # given a pool file with no rows, and one whose only rows are unusable
    schema = pa.schema([("id", pa.string()), ("image", pa.binary())])
    empty = _write(tmp_path / "empty" / "part-0.parquet", schema.empty_table())
    unusable = _write(tmp_path / "bad" / "part-0.parquet", pa.table({"id": ["x", "y"], "image": [b"", b"junk"]}))
    # when each is ingested, then the error says the pool is empty and why
    with pytest.raises(EmptyPoolError, match="has no rows"):
        _ingest(empty)
    with pytest.raises(EmptyPoolError, match=r"all 2 row\(s\) were skipped"):
        _ingest(unusable)
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(EmptyPoolError, match=r"no \*\.parquet"):
        _ingest(tmp_path / "nothing-here")


def _selection_pool(n: int, difficulties=None) -> SelectionInput:
    table = pa.table(
        {
            "id": [f"c{i:03d}" for i in range(n)],
            "difficulty": difficulties if difficulties is not None else [i / n for i in range(n)],
            "condition": ["normal" if i % 3 else "low_light" for i in range(n)],
        }
    )
    return SelectionInput.from_table(table)


@pytest.mark.parametrize("strategy", ["topk", "random", "stratified", "hard_tail_mix"])
def test_k_larger_than_the_pool_is_a_clear_error(strategy):
    # given a pool of 10 scored candidates, when K=11 is asked for, then the error names K and the pool size
    with pytest.raises(SelectionError) as error:
        select_calibration_set(_selection_pool(10), strategy, k=11, seed=0)
    assert "selection.k=11" in str(error.value) and "10" in str(error.value), f"unclear: {error.value}"


def test_duplicate_ids_and_nan_scores_at_selection():
    # given a scores table with a duplicate id, and one with NaN and missing difficulties
    with pytest.raises(SelectionError, match="more than once"):
        SelectionInput.from_table(pa.table({"id": ["a", "b", "a"], "difficulty": [0.1, 0.2, 0.3]}))
    nan_pool = _selection_pool(10, [float("nan"), None, *[0.1 * i for i in range(8)]])
    # when the hardest are picked, then NaN and missing scores are never chosen and not counted as scored
    picked = select_calibration_set(nan_pool, "topk", k=8, seed=0).ids
    assert {"c000", "c001"}.isdisjoint(picked) and len(picked) == 8, f"NaN/None never picked: {picked}"
    with pytest.raises(SelectionError, match="only 8 candidate"):
        select_calibration_set(nan_pool, "topk", k=9, seed=0)


class _ScriptedGateway(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that answers a fixed content per image digest."""

    protocol_version = "HTTP/1.1"
    replies: ClassVar[dict[str, str]] = {}
    requests: ClassVar[Counter] = Counter()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        url = body["messages"][1]["content"][1]["image_url"]["url"]
        digest = hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
        self.requests[digest] += 1
        content = self.replies.get(digest, '{"difficulty": 0.42, "factors": ["clutter"]}')
        payload = json.dumps(
            {
                "id": f"chatcmpl-{time.time_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


BAD_REPLIES = {
    "nan": ('{"difficulty": NaN, "factors": []}', "out of range"),
    "infinity": ('{"difficulty": Infinity, "factors": []}', "out of range"),
    "negative": ('{"difficulty": -0.25, "factors": []}', "out of range"),
    "over-one": ('{"difficulty": 1.7, "factors": []}', "out of range"),
    "string": ('{"difficulty": "0.5", "factors": []}', "not a number"),
    "prose": ("I would rate this frame as fairly hard, around 0.7 out of 1.", "not JSON"),
}


def test_nan_negative_over_one_and_prose_scores_fail_with_reasons_and_the_rest_are_scored(distinct_pool, redis_client):
    # given a gateway that answers a bad score for 6 images and a valid one for 30 others
    candidates = read_rows(distinct_pool)[100:136]
    bad_ids = {}
    _ScriptedGateway.replies, _ScriptedGateway.requests = {}, Counter()
    for candidate, (name, (content, _)) in zip(candidates, BAD_REPLIES.items(), strict=False):
        _ScriptedGateway.replies[hashlib.sha256(candidate.image).hexdigest()] = content
        bad_ids[candidate.id] = name
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = new_session(scoring_config(), redis_client, f"http://127.0.0.1:{server.server_address[1]}/v1")
        # when the shard is scored
        records = score_shard(session, candidates)
    finally:
        server.shutdown()
    # then each bad reply is asked once more, then recorded as failed with the reason
    by_id = {r.id: r for r in records}
    for candidate_id, name in bad_ids.items():
        record, reason = by_id[candidate_id], BAD_REPLIES[name][1]
        assert record.status == "failed" and reason in record.reason, f"{name}: {record.status} {record.reason!r}"
        assert record.difficulty is None, f"{name}: no difficulty is kept from a bad reply"
    assert all(n == REPLY_ATTEMPTS for d, n in _ScriptedGateway.requests.items() if d in _ScriptedGateway.replies), (
        f"each bad image was asked exactly {REPLY_ATTEMPTS} times: {_ScriptedGateway.requests}"
    )
    # and every other candidate is scored with the served value
    good = [r for r in records if r.id not in bad_ids]
    assert len(good) == 30 and all(r.status == "scored" and r.difficulty == 0.42 for r in good), (
        f"the 30 good candidates are scored: {Counter(r.status for r in good)}"
    )
    # and the ledger books all 42 paid replies (30 good + 6 × 2 invalid) at the same unit price
    unit = session.gateway.cost("reference-vlm", 300, 20)
    state = session.ledger.state()
    assert state.calls == 42 and to_nano(state.spent_eur) == 42 * to_nano(unit), (
        f"ledger: {state.calls} calls, €{state.spent_eur} for 42 × €{unit}"
    )
    assert state.reserved_eur == 0, "nothing stays reserved"
