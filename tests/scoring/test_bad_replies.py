"""Scenario 5, model side: a gateway that answers NaN, negative, over-1, string-typed or prose
scores for some images. Those are recorded as failed with the reason after one more try,
every other candidate is scored, and the ledger books what was paid."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

from tasks.scoring.budget import to_nano
from tasks.scoring.passes import REPLY_ATTEMPTS, score_shard
from tests.support import LoopbackHTTPServer, rows, scoring_config, session_for

pytestmark = pytest.mark.reliability


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
    candidates = rows(distinct_pool, 100, 36)
    bad_ids = {}
    _ScriptedGateway.replies, _ScriptedGateway.requests = {}, Counter()
    for candidate, (name, (content, _)) in zip(candidates, BAD_REPLIES.items(), strict=False):
        _ScriptedGateway.replies[hashlib.sha256(candidate.image).hexdigest()] = content
        bad_ids[candidate.id] = name
    server = LoopbackHTTPServer(("127.0.0.1", 0), _ScriptedGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = session_for(scoring_config(), redis_client, f"http://127.0.0.1:{server.server_address[1]}/v1")
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
    # (a connection refused before sending is retried and settled at €0: calls ≥ 42)
    unit = session.gateway.cost("reference-vlm", 300, 20)
    state = session.ledger.state()
    assert state.calls >= 42 and to_nano(state.spent_eur) == 42 * to_nano(unit), (
        f"ledger: {state.calls} calls, €{state.spent_eur} for 42 × €{unit}"
    )
    assert state.reserved_eur == 0, "nothing stays reserved"
