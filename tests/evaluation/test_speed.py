"""Speed figures are measured in the run that reports them: the FP16 accuracy is cached across
runs, its speed never is, and both IRs are timed together."""

import shutil

import pytest

from tasks.config import EvaluationConfig
from tasks.evaluation.evaluate import evaluate_ir_cached, measure_speeds, with_speed
from tests.support import requires_demo_detector

pytestmark = [pytest.mark.integration, requires_demo_detector]


def test_the_cached_fp16_evaluation_holds_accuracy_only(fp16_ir, eval_split, tmp_path):
    # given a private copy of the IR, so the cache file lands beside it
    ir = tmp_path / fp16_ir.name
    shutil.copy(fp16_ir, ir)
    shutil.copy(fp16_ir.with_suffix(".bin"), ir.with_suffix(".bin"))
    config = EvaluationConfig(latency_iterations=2)
    # when evaluated twice
    first = evaluate_ir_cached(ir, eval_split, config)
    second = evaluate_ir_cached(ir, eval_split, config)
    # then the second run reads the cache, and neither carries a speed from another run
    assert [p.name for p in tmp_path.glob("map-*.json")], "the accuracy is cached beside the IR"
    assert second == first, "the cached evaluation is the first one"
    assert first.latency_ms is None and first.throughput_ips is None, f"no speed is cached: {first}"
    assert 0.0 < first.map <= 1.0, f"a real mAP: {first.map}"


def test_both_irs_are_timed_in_one_measurement(fp16_ir, eval_split, tmp_path):
    # when the same IR is measured as two entries (the ratio of like with like is ~1)
    twin = tmp_path / "twin.xml"
    shutil.copy(fp16_ir, twin)
    shutil.copy(fp16_ir.with_suffix(".bin"), twin.with_suffix(".bin"))
    speeds = measure_speeds([fp16_ir, twin], eval_split, EvaluationConfig(latency_iterations=5))
    # then each gets a positive latency and throughput, and with_speed attaches them
    assert set(speeds) == {fp16_ir, twin}, f"one speed per IR: {speeds}"
    assert all(s.latency_ms > 0 and s.throughput_ips > 0 for s in speeds.values()), speeds
    ratio = speeds[twin].throughput_ips / speeds[fp16_ir].throughput_ips
    assert 0.5 < ratio < 2.0, f"the same model measured together should be within 2×: {ratio:.2f}"
    timed = with_speed(evaluate_ir_cached(twin, eval_split, EvaluationConfig()), speeds[fp16_ir])
    assert timed.throughput_ips == speeds[fp16_ir].throughput_ips, "with_speed attaches this run's speed"
