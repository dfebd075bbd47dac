"""Routing decisions for every header/difficulty case, latency steering, EWMA and fallback."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from tasks.config import ServingConfig
from tasks.detection.postprocess import Detections
from tasks.serving.app import create_app
from tasks.serving.routing import LatencyTracker, RoutingError, choose_tier, next_higher

pytestmark = pytest.mark.unit

CONFIG = ServingConfig(priority_fp16_min=8, priority_int8_max=2, medium_difficulty=0.45, hard_difficulty=0.6)
ALL = ("int8", "mixed", "fp16")
EASY, MEDIUM, HARD = 0.2, 0.5, 0.8


@pytest.mark.parametrize(
    ("priority", "difficulty", "tier", "reason"),
    [
        (10, EASY, "fp16", "priority-high"),
        (8, EASY, "fp16", "priority-high"),
        (1, HARD, "int8", "priority-low"),
        (2, HARD, "int8", "priority-low"),
        (5, EASY, "int8", "difficulty-easy"),
        (5, MEDIUM, "mixed", "difficulty-medium"),
        (5, HARD, "fp16", "difficulty-hard"),
        (None, EASY, "int8", "difficulty-easy"),
        (None, HARD, "fp16", "difficulty-hard"),
        (5, 0.45, "mixed", "difficulty-medium"),
        (5, 0.6, "fp16", "difficulty-hard"),
        (5, None, "fp16", "no-difficulty"),
    ],
)
def test_priority_and_difficulty_pick_the_tier(priority, difficulty, tier, reason):
    # given all three tiers and no latency budget, when routing, then priority wins over difficulty
    decision = choose_tier(priority, None, difficulty, ALL, CONFIG)
    assert (decision.tier, decision.reason) == (tier, reason), f"p={priority} d={difficulty}: {decision}"


def test_missing_mixed_tier_goes_up_to_fp16():
    # given no mixed IR, when a medium image arrives, then the next more precise tier serves it
    decision = choose_tier(5, None, MEDIUM, ("int8", "fp16"), CONFIG)
    assert decision.tier == "fp16", f"medium without mixed should go to fp16: {decision}"
    assert decision.reason == "difficulty-medium+unavailable-up", f"reason should say why: {decision.reason}"


def test_only_int8_loaded_serves_everything_downward():
    # given only the int8 IR, when fp16 precision is asked for, then int8 serves and says so
    decision = choose_tier(9, None, HARD, ("int8",), CONFIG)
    assert (decision.tier, decision.reason) == ("int8", "priority-high+unavailable-down"), f"{decision}"


LATENCY = {"int8": 5.0, "mixed": 8.0, "fp16": 12.0}


@pytest.mark.parametrize(
    ("max_latency_ms", "tier", "reason"),
    [
        (None, "fp16", "difficulty-hard"),
        (50.0, "fp16", "difficulty-hard"),
        (12.0, "fp16", "difficulty-hard"),
        (10.0, "mixed", "difficulty-hard+latency-down"),
        (6.0, "int8", "difficulty-hard+latency-down"),
        (1.0, "int8", "difficulty-hard+latency-unmet"),
    ],
)
def test_latency_budget_steps_down_to_the_most_precise_tier_that_fits(max_latency_ms, tier, reason):
    # given per-tier latency estimates, when a hard image comes with a budget, then the best fitting tier serves
    decision = choose_tier(5, max_latency_ms, HARD, LATENCY, CONFIG)
    assert (decision.tier, decision.reason) == (tier, reason), f"budget {max_latency_ms}: {decision}"


def test_latency_budget_never_raises_precision():
    # given an easy image and a generous budget, when routing, then int8 stays (the budget is a ceiling)
    decision = choose_tier(5, 100.0, EASY, LATENCY, CONFIG)
    assert decision.tier == "int8", f"an easy image should stay on int8: {decision}"


def test_unknown_latency_is_not_a_reason_to_step_down():
    # given no estimate yet for fp16, when a tight budget arrives, then the wanted tier is kept
    decision = choose_tier(9, 1.0, EASY, {"int8": 5.0, "fp16": None}, CONFIG)
    assert decision.tier == "fp16", f"no estimate → keep fp16: {decision}"


@pytest.mark.parametrize(
    ("priority", "max_latency_ms", "difficulty", "tiers"),
    [
        (0, None, EASY, ALL),
        (11, None, EASY, ALL),
        (5, 0.0, EASY, ALL),
        (5, float("nan"), EASY, ALL),
        (5, None, 1.5, ALL),
        (5, None, EASY, ()),
    ],
)
def test_invalid_inputs_are_refused(priority, max_latency_ms, difficulty, tiers):
    # given an out-of-range header or no tier, when routing, then a RoutingError explains it
    with pytest.raises(RoutingError):
        choose_tier(priority, max_latency_ms, difficulty, tiers, CONFIG)


def test_next_higher_follows_the_precision_order():
    assert next_higher("int8", ALL) == "mixed", "int8 → mixed when mixed is loaded"
    assert next_higher("int8", ("int8", "fp16")) == "fp16", "int8 → fp16 without mixed"
    assert next_higher("fp16", ALL) is None, "fp16 is the top tier"


def test_latency_tracker_is_an_ewma_seeded_by_warm_up():
    tracker = LatencyTracker(alpha=0.5)
    tracker.seed("int8", 10.0)
    assert tracker.observe("int8", 20.0) == pytest.approx(15.0), "EWMA halfway with alpha 0.5"
    assert tracker.observe("fp16", 7.0) == pytest.approx(7.0), "first observation of an unseeded tier is taken as is"


def test_config_refuses_overlapping_bands():
    with pytest.raises(ValidationError, match="medium_difficulty"):
        ServingConfig(medium_difficulty=0.7, hard_difficulty=0.6)
    with pytest.raises(ValidationError, match="priority_int8_max"):
        ServingConfig(priority_int8_max=8, priority_fp16_min=8)


class FakeEngine:
    input_size = 32

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def infer(self, image):
        self.calls += 1
        if self.fail:
            raise RuntimeError("injected tier failure")
        return Detections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.9], np.float32), np.array([0]))


def _png(value: int = 128, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_failing_tier_falls_back_to_the_next_higher_one():
    # given a failing int8 tier, when a low-priority request is routed to it, then mixed answers and headers say so
    engines = {"int8": FakeEngine(fail=True), "mixed": FakeEngine(), "fp16": FakeEngine()}
    client = TestClient(create_app(engines, CONFIG))
    response = client.post("/v1/detect", content=_png(), headers={"X-Priority": "1"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Tailcal-Tier"] == "mixed", f"next higher tier should answer: {response.headers}"
    assert response.headers["X-Tailcal-Fallback-From"] == "int8", "the failed tier is reported"
    metrics = client.get("/metrics").text
    assert 'tailcal_serving_upstream_errors_total{tier="int8"} 1.0' in metrics, "the failure is counted"
    assert 'tailcal_serving_fallbacks_total{from_tier="int8",to_tier="mixed"} 1.0' in metrics, "fallback counted"


def test_top_tier_failure_is_a_503_and_bad_headers_a_400():
    engines = {"int8": FakeEngine(fail=True), "fp16": FakeEngine(fail=True)}
    client = TestClient(create_app(engines, CONFIG))
    response = client.post("/v1/detect", content=_png(), headers={"X-Priority": "1"})
    assert response.status_code == 503, f"every tier failed: {response.status_code} {response.text}"
    assert engines["fp16"].calls == 1, "fp16 was tried after int8"
    bad = client.post("/v1/detect", content=_png(), headers={"X-Priority": "high"})
    assert bad.status_code == 400 and "X-Priority" in bad.json()["error"], f"bad header: {bad.text}"
    out_of_range = client.post("/v1/detect", content=_png(), headers={"X-Priority": "42"})
    assert out_of_range.status_code == 400, f"priority 42: {out_of_range.text}"
    garbage = client.post("/v1/detect", content=b"not an image")
    assert garbage.status_code == 400, f"undecodable body: {garbage.text}"
    calls = sum(engine.calls for engine in engines.values())
    other_size = client.post("/v1/detect", content=_png(size=48))
    assert sum(engine.calls for engine in engines.values()) > calls, (
        f"any image size reaches the tiers (each fits it to its input), no 422: {other_size.text}"
    )


class ManyBoxes:
    """Answers five boxes in an order that is not by score, as a decoder may."""

    input_size = 32
    scores = np.array([0.3, 0.05, 0.9, 0.001, 0.6], np.float32)

    def infer(self, image):
        boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
        return Detections(boxes, self.scores, np.arange(5))


@pytest.mark.parametrize(
    ("min_score", "max_detections", "scores"),
    [
        (0.0, None, [0.9, 0.6, 0.3, 0.05, 0.001]),
        (0.3, None, [0.9, 0.6, 0.3]),
        (0.0, 2, [0.9, 0.6]),
        (0.5, 4, [0.9, 0.6]),
        (0.95, None, []),
    ],
)
def test_answer_is_cut_by_min_score_and_max_detections_highest_first(min_score, max_detections, scores):
    # given a tier that finds five boxes, when serving cuts by score and count, then the answer keeps the best ones
    config = CONFIG.model_copy(update={"min_score": min_score, "max_detections": max_detections})
    body = TestClient(create_app({"fp16": ManyBoxes()}, config)).post("/v1/detect", content=_png()).json()
    assert [d["score"] for d in body["detections"]] == pytest.approx(scores), body["detections"]
    for d in body["detections"]:
        label = d["label"]
        assert d["box"] == [4.0 * label + i for i in range(4)], f"box and label stay together: {d}"


@pytest.mark.parametrize(("key", "value"), [("min_score", 1.5), ("min_score", -0.1), ("max_detections", 0)])
def test_config_refuses_cuts_outside_their_range(key, value):
    with pytest.raises(ValidationError, match=key):
        ServingConfig(**{key: value})


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_encoded(Image.new("RGB", (400, 300), "grey"), "JPEG")[:400], id="JPEG cut after its header"),
        pytest.param(_encoded(Image.new("RGB", (400, 300), "grey"), "PNG")[:200], id="PNG cut after its header"),
        pytest.param(_encoded(Image.new("F", (40, 30), 200.0), "TIFF"), id="float TIFF"),
    ],
)
def test_an_image_whose_header_reads_but_pixels_do_not_is_a_400_not_a_500(body):
    engine = FakeEngine()
    response = TestClient(create_app({"fp16": engine}, CONFIG), raise_server_exceptions=False).post(
        "/v1/detect", content=body
    )
    assert response.status_code == 400, f"{response.status_code}: {response.text}"
    assert "could not decode the image" in response.json()["error"] and engine.calls == 0, response.text
