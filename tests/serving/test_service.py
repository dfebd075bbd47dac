"""The inference service on 127.0.0.1 with real FP16 and INT8 IRs of the shipped demo detector."""

import shutil

import httpx
import numpy as np
import pytest

from tasks.calibration.quantize import quantize_ir
from tasks.config import QuantizationConfig, ServingConfig
from tasks.difficulty import assess
from tasks.serving.app import create_app
from tasks.serving.engines import ServingError, load_engines, resolve_tier_paths, warm_up
from tasks.serving.server import BackgroundServer
from tests.support import requires_demo_detector

pytestmark = [pytest.mark.integration, pytest.mark.slow, requires_demo_detector]


@pytest.fixture(scope="module")
def ir_dir(fp16_ir, eval_split, tmp_path_factory):
    """detector_fp16.xml + detector_int8.xml (16 images), as a release cycle's ir/ folder holds them."""
    out = tmp_path_factory.mktemp("ir")
    for suffix in (".xml", ".bin"):
        shutil.copy(fp16_ir.with_suffix(suffix), out / fp16_ir.with_suffix(suffix).name)
    quantize_ir(out / fp16_ir.name, eval_split.head(16).images, QuantizationConfig(), out_dir=out)
    return out


@pytest.fixture(scope="module")
def config(ir_dir):
    return ServingConfig(ir_dir=ir_dir, infer_requests_per_tier=1, warmup_requests=2)


@pytest.fixture(scope="module")
def engines(config):
    return load_engines(config)


@pytest.fixture(scope="module")
def images(eval_split):
    files = [(eval_split.directory / "images" / img["file_name"]).read_bytes() for img in eval_split.coco["images"]]
    return files, eval_split.images


def test_tiers_are_found_by_the_release_cycle_file_names(config, ir_dir):
    paths = resolve_tier_paths(config).paths
    assert set(paths) == {"int8", "fp16"}, f"int8 + fp16 expected (no mixed IR written): {paths}"
    with pytest.raises(ServingError, match="no tier IR"):
        resolve_tier_paths(ServingConfig(ir_dir=ir_dir / "missing"))


def test_routes_by_difficulty_and_priority_over_http(engines, config, images):
    # given the service on loopback, when easy and hard frames arrive, then headers name the tier routing chose
    files, decoded = images
    difficulty = [assess(image).difficulty for image in decoded]
    easy = int(np.argmin(difficulty))
    hard = int(np.argmax(difficulty))
    assert difficulty[easy] < config.medium_difficulty <= config.hard_difficulty <= difficulty[hard], (
        f"the split needs an easy and a hard frame: {sorted(difficulty)}"
    )
    app = create_app(engines, config, warm_up(engines, config.warmup_requests))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        cases = [
            (files[easy], {}, "int8", "difficulty-easy"),
            (files[hard], {}, "fp16", "difficulty-hard"),
            (files[hard], {"X-Priority": "1"}, "int8", "priority-low"),
            (files[easy], {"X-Priority": "10"}, "fp16", "priority-high"),
            (files[hard], {"X-Max-Latency-Ms": "0.001"}, "int8", "difficulty-hard+latency-unmet"),
        ]
        for body, headers, tier, reason in cases:
            response = client.post("/v1/detect", content=body, headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["X-Tailcal-Tier"] == tier, f"{headers}: {dict(response.headers)}"
            assert response.headers["X-Tailcal-Reason"] == reason, f"{headers}: {dict(response.headers)}"
            boxes = np.array([d["box"] for d in response.json()["detections"]])
            assert boxes.size and boxes.min() >= 0 and boxes.max() <= 192, "boxes are pixels of the 192 px frame"
        metrics = client.get("/metrics").text
    assert 'tailcal_serving_requests_total{tier="int8"} 3.0' in metrics, "requests by tier are counted"
    assert 'tailcal_serving_requests_total{tier="fp16"} 2.0' in metrics, "requests by tier are counted"
    assert "tailcal_serving_routing_decision_seconds_count 5.0" in metrics, "routing latency is measured"
    assert 'tailcal_serving_request_seconds_bucket{le="0.5",tier="fp16"}' in metrics, "latency histogram per tier"


class BrokenEngine:
    """A real engine whose inference raises, as a corrupted or evicted model would."""

    def __init__(self, engine) -> None:
        self.input_size = engine.input_size

    def infer(self, image):
        raise RuntimeError("injected: int8 tier unavailable")


def test_failing_int8_tier_falls_back_to_fp16_with_the_same_answer(engines, config, images):
    # given a broken int8 tier, when an easy frame is routed to it, then fp16 answers exactly as it would directly
    files, decoded = images
    easy = int(np.argmin([assess(image).difficulty for image in decoded]))
    app = create_app({"int8": BrokenEngine(engines["int8"]), "fp16": engines["fp16"]}, config)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post("/v1/detect", content=files[easy])
        metrics = client.get("/metrics").text
    assert response.status_code == 200, response.text
    assert response.headers["X-Tailcal-Tier"] == "fp16", f"fallback tier: {dict(response.headers)}"
    assert response.headers["X-Tailcal-Fallback-From"] == "int8", f"failed tier: {dict(response.headers)}"
    direct = engines["fp16"].infer(decoded[easy])
    served = np.array([d["box"] for d in response.json()["detections"]])
    np.testing.assert_allclose(served, direct.boxes, atol=0.01, err_msg="served boxes differ from the fp16 engine's")
    assert 'tailcal_serving_upstream_errors_total{tier="int8"} 1.0' in metrics, "upstream error counted per tier"


def test_detections_carry_the_category_id_and_name_of_the_release(ir_dir, config, images, tmp_path):
    # given the release's categories.json beside the IRs, with sparse ids (label i → ids[i])
    from tasks.detection.labels import Categories
    from tasks.serving.server import build_app

    served_dir = tmp_path / "ir"
    shutil.copytree(ir_dir, served_dir)
    Categories((3, 17, 42, 90), ("circle", "square", "triangle", "cross")).write(served_dir / "categories.json")
    release = config.model_copy(update={"ir_dir": served_dir})
    files, _ = images
    # when a frame is served by the app the `tailcal serve` command builds
    with BackgroundServer(build_app(release)) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        detections = client.post("/v1/detect", content=files[0]).json()["detections"]
        # and without a categories.json, the label index only
        bare = create_app(load_engines(config), config)
    assert detections, "the frame has detections"
    names = {3: "circle", 17: "square", 42: "triangle", 90: "cross"}
    for d in detections:
        assert d["category_id"] == (3, 17, 42, 90)[d["label"]], f"label → category id: {d}"
        assert d["category"] == names[d["category_id"]], f"and its name: {d}"
    with BackgroundServer(bare) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        plain = client.post("/v1/detect", content=files[0]).json()["detections"]
    assert plain and all(set(d) == {"box", "score", "label"} for d in plain), plain[:2]
    # and a configured categories file that is missing is refused by name
    with pytest.raises(ServingError, match=r"serving\.categories .*nope\.json does not exist"):
        build_app(config.model_copy(update={"categories": tmp_path / "nope.json"}))


def test_min_score_and_max_detections_cut_what_the_real_tier_answers(engines, config, images):
    # given the demo's fp16 IR, when served with a score floor and a count cap, then the answer is the IR's best boxes
    files, decoded = images
    direct = engines["fp16"].infer(decoded[0])
    floor = float(np.sort(direct.scores)[-3])  # the third-best score: three boxes pass (no ties in float32 here)
    cut = config.model_copy(update={"default_tier": "fp16", "min_score": floor, "max_detections": 2})
    app = create_app(engines, cut)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        detections = client.post("/v1/detect", content=files[0], headers={"X-Priority": "10"}).json()["detections"]
    best = np.argsort(-direct.scores)[:2]
    assert len(direct.scores) > 3 and len(detections) == 2, f"{len(direct.scores)} found, {len(detections)} answered"
    np.testing.assert_allclose([d["box"] for d in detections], direct.boxes[best], atol=0.01)
    assert [d["label"] for d in detections] == direct.labels[best].tolist()
