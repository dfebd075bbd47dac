"""Drift PSI: ≈ 0 for the same distribution, above the threshold for a shifted (low-light) one;
and which release run the monitor compares against. (The flow body: tests/flows/test_drift_monitor.py.)"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import DriftConfig, PoolConfig, RuntimeEnv
from tasks.drift import (
    DriftError,
    FeatureSample,
    compare_samples,
    find_reference,
    psi_categorical,
    psi_continuous,
    reference_ids,
    sample_features,
)
from tasks.errors import ConfigError
from tests.support import DRIFT_THRESHOLD as THRESHOLD
from tests.support import darken

pytestmark = pytest.mark.unit


def test_psi_of_a_sample_against_itself_is_zero():
    values = np.random.default_rng(0).gamma(2.0, 0.1, 500)
    psi = psi_continuous("x", values, values).psi
    assert psi == pytest.approx(0.0, abs=1e-12), f"identical samples: PSI {psi}"


def test_psi_of_two_draws_of_one_distribution_is_small():
    # given two independent large draws of the same distribution, then PSI is sampling noise only
    rng = np.random.default_rng(1)
    psi = psi_continuous("x", rng.normal(0.3, 0.1, 5000), rng.normal(0.3, 0.1, 5000)).psi
    assert psi < 0.02, f"same distribution should give PSI ≈ 0, got {psi:.4f}"


def test_psi_of_a_shifted_distribution_is_above_threshold():
    rng = np.random.default_rng(2)
    psi = psi_continuous("x", rng.normal(0.3, 0.1, 2000), rng.normal(0.15, 0.1, 2000)).psi
    assert psi > THRESHOLD, f"a 1.5σ shift should exceed {THRESHOLD}, got {psi:.3f}"


def test_psi_bins_are_reference_quantiles_and_survive_ties():
    # given a feature that is mostly one value (e.g. saturated fraction 0), then bins collapse but PSI stays finite
    reference = np.r_[np.zeros(900), np.linspace(0.01, 0.2, 100)]
    result = psi_continuous("saturated", reference, reference[::-1])
    assert np.isfinite(result.psi) and result.psi == pytest.approx(0.0, abs=1e-12), f"ties: {result}"
    assert abs(sum(result.reference) - 1) < 1e-9, f"proportions sum to 1: {result.reference}"
    deciles = psi_continuous("x", np.arange(1000.0), np.arange(1000.0))
    assert len(deciles.bins) == 10 and max(deciles.reference) < 0.11, f"10 equal-mass bins: {deciles.reference}"


def test_categorical_psi_counts_new_categories():
    same = psi_categorical("condition", ["normal"] * 60 + ["low_light"] * 6, ["normal"] * 30 + ["low_light"] * 3)
    assert same.psi == pytest.approx(0.0, abs=1e-9), f"same tag mix: {same.psi}"
    shifted = psi_categorical("condition", ["normal"] * 60 + ["low_light"] * 6, ["low_light"] * 30 + ["snow"] * 10)
    assert shifted.psi > THRESHOLD, f"low-light-heavy + unseen tag should exceed the threshold: {shifted.psi}"


@pytest.fixture(scope="module")
def reference(drift_pool):
    from tasks.ingest import IngestReport, iter_candidate_batches

    return sample_features(iter_candidate_batches(PoolConfig(uri=str(drift_pool)), RuntimeEnv(), IngestReport()))


def test_real_frames_same_sample_no_drift_and_low_light_sample_drifts(drift_pool, reference):
    # given the calibration pool's own frames, then no feature drifts
    config = DriftConfig(min_samples=30, psi_threshold=THRESHOLD)
    same = compare_samples(reference, reference, config)
    assert not same.recalibrate and same.max_psi < 1e-9, f"same sample: {same.metrics()}"
    # when production is the same scenes under failed lighting, tagged low_light, then recalibrate is flagged
    table = pq.read_table(drift_pool, columns=["id", "image"]).to_pylist()
    dark = FeatureSample()
    for row in table:
        dark.add(row["id"], darken(row["image"]), "low_light")
    shifted = compare_samples(reference, dark, config)
    assert shifted.recalibrate, f"low-light production should flag recalibrate: {shifted.metrics()}"
    for feature in ("difficulty", "brightness", "condition"):
        assert feature in shifted.drifted, f"{feature} should drift under low light: {shifted.metrics()}"
    assert shifted.metrics()["drift.recalibrate"] == 1.0, "the MLflow metric carries the verdict"


def test_too_small_a_sample_is_an_error_not_a_verdict(reference):
    tiny = FeatureSample()
    tiny.ids, tiny.continuous = reference.ids[:3], {k: v[:3] for k, v in reference.continuous.items()}
    tiny.categorical = {k: v[:3] for k, v in reference.categorical.items()}
    with pytest.raises(DriftError, match="min_samples"):
        compare_samples(reference, tiny, DriftConfig(min_samples=30))


def test_scheduled_monitor_without_a_reference_uses_the_newest_release_run(tmp_path):
    # given two release runs under data_dir/runs, the newer written last, and a newer ablation run
    runs_dir = tmp_path / "runs"
    with pytest.raises(ConfigError, match="run the release cycle first"):
        find_reference(runs_dir, "pool")
    for run_id, mtime, kind in (("old", 1_000, "release"), ("new", 2_000, "release"), ("ablation", 3_000, "ablation")):
        path = runs_dir / run_id / "scores.parquet"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
        (path.parent / ("report.md" if kind == "release" else "ablation.md")).write_text("x")
    # when no reference is named (as on the schedule), then the newest run's scores.parquet is used
    assert find_reference(runs_dir, "pool").parent.name == "new", "newest release run, not the ablation"
    assert find_reference(runs_dir, "pool", run_id="old").parent.name == "old", "a named run wins"


def test_a_named_reference_must_exist_and_its_ids_are_read(tmp_path):
    # given a selection.parquet named by path, its ids are the reference; a missing file is a clear error
    path = tmp_path / "selection.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "rank": [0, 1, 2]}), path)
    assert find_reference(tmp_path / "runs", "selection", path=path) == path, "a named path is used as given"
    assert reference_ids(path) == {"a", "b"}, "the ids the reference holds"
    with pytest.raises(ConfigError, match="does not exist"):
        find_reference(tmp_path / "runs", "selection", run_id="absent")


def _unlabelled(drift_pool, dim: bool = False, condition: str | None = None) -> FeatureSample:
    """The drift pool's frames as a pool without a condition column (optionally darkened, or all tagged)."""
    from tasks.imaging import decode_rgb

    sample = FeatureSample()
    for row in pq.read_table(drift_pool, columns=["id", "image"]).to_pylist():
        sample.add(row["id"], darken(row["image"]) if dim else decode_rgb(row["image"]), condition)
    return sample


def test_without_condition_tags_the_monitor_compares_the_factor_mix(drift_pool):
    # given a reference and production without condition tags
    config = DriftConfig(min_samples=30, psi_threshold=THRESHOLD)
    reference = _unlabelled(drift_pool)
    # when production is the same frames, then nothing drifts, and the grouping says factors
    same = compare_samples(reference, _unlabelled(drift_pool), config)
    assert same.grouping == "factors" and "factors" in same.features, f"factor grouping: {same.as_dict()}"
    assert "condition" not in same.features, "an all-unknown condition column says nothing"
    assert same.features["factors"].psi == pytest.approx(0.0, abs=1e-12), f"same frames: {same.metrics()}"
    # when the line lighting fails, then the factor mix shifts towards low_light and is flagged
    dark = compare_samples(reference, _unlabelled(drift_pool, dim=True), config)
    assert "factors" in dark.drifted, f"darkened frames shift the factor mix: {dark.metrics()}"
    mix = dict(zip(dark.features["factors"].bins, dark.features["factors"].production, strict=True))
    assert mix.get("low_light", 0.0) > 0.5, f"most darkened frames land in the low_light stratum: {mix}"
    assert dark.as_dict()["grouping"] == "factors", "the report names the grouping"


def test_a_condition_column_on_one_side_only_is_not_read_as_drift(drift_pool, reference):
    # given a labelled reference (the archive) and the same frames from production without labels
    config = DriftConfig(min_samples=30, psi_threshold=THRESHOLD)
    report = compare_samples(reference, _unlabelled(drift_pool), config)
    # then the factor mix is compared, and the same frames do not drift
    assert report.grouping == "factors" and not report.recalibrate, f"no drift in the same frames: {report.metrics()}"


def test_condition_tags_on_some_production_rows_only_are_not_read_as_drift(drift_pool, reference):
    # given the reference's own frames as production, every other row without its condition tag
    half = FeatureSample()
    for index, (image_id, condition) in enumerate(zip(reference.ids, reference.categorical["condition"], strict=True)):
        half.ids.append(image_id)
        half.categorical["condition"].append(condition if index % 2 else "unknown")
    half.continuous = {k: list(v) for k, v in reference.continuous.items()}
    half.factors = list(reference.factors)
    # when compared, then the untagged rows are no category of their own: the factor mix is compared, no drift
    report = compare_samples(reference, half, DriftConfig(min_samples=30, psi_threshold=THRESHOLD))
    assert report.grouping == "factors" and not report.recalibrate, f"same frames: {report.metrics()}"


def _subset(sample: FeatureSample, rows: slice, ids: list[str] | None = None) -> FeatureSample:
    out = FeatureSample()
    out.ids = ids or sample.ids[rows]
    out.continuous = {k: v[rows] for k, v in sample.continuous.items()}
    out.categorical = {k: v[rows] for k, v in sample.categorical.items()}
    out.factors = sample.factors[rows]
    out.digests = sample.digests[rows]
    return out


def test_a_reference_missing_from_the_pool_is_refused_naming_both(reference):
    from tasks.drift import check_comparable

    where = {"pool": "s3://pools/line-7/", "reference": "runs/r1/scores.parquet", "production": "s3://prod/today/"}
    other = _subset(reference, slice(0, 60), [f"new-{i}" for i in range(60)])
    other.digests = [bytes([i]) * 16 for i in range(60)]  # new frames: pixels the reference does not hold
    # given a release that scored 300 frames of which only 40 are still in the pool
    with pytest.raises(DriftError, match=r"260 of the 300 reference images in runs/r1/scores.parquet .* s3://pools"):
        check_comparable(300, _subset(reference, slice(0, 40)), other, where)
    # and a production sample that is mostly the reference's own frames under new ids (the pool read as production)
    renamed = _subset(reference, slice(0, 60), [f"prod-{i}" for i in range(60)])
    with pytest.raises(DriftError, match=r"60 of the 60 production frames sampled from s3://prod/today/"):
        check_comparable(len(reference), reference, renamed, where)
    # then a complete reference against new frames passes
    check_comparable(len(reference), reference, other, where)
