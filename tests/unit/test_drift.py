"""Drift PSI: ≈ 0 for the same distribution, above the threshold for a shifted (low-light) one;
and the drift-monitor flow body end to end on a small real pool with SQLite MLflow."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tasks.config import DriftConfig, PoolConfig, RuntimeEnv, SyntheticConfig
from tasks.drift import DriftError, FeatureSample, compare_samples, psi_categorical, psi_continuous, sample_features
from tasks.errors import ConfigError

THRESHOLD = 0.25


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


def _darken(jpeg: bytes, factor: float = 0.25) -> np.ndarray:
    """A frame as if the line lighting failed: the same scene at a quarter of the exposure."""
    with Image.open(io.BytesIO(jpeg)) as image:
        return (np.asarray(image.convert("RGB"), np.float32) * factor).astype(np.uint8)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from tasks.synth.write import write_pool

    out = tmp_path_factory.mktemp("drift") / "pool"
    write_pool(SyntheticConfig(seed=4, burst_probability=0.0), out, n=120)
    return out


@pytest.fixture(scope="module")
def reference(pool):
    from tasks.ingest import IngestReport, iter_candidate_batches

    return sample_features(iter_candidate_batches(str(pool), PoolConfig(), RuntimeEnv(), IngestReport()))


def test_real_frames_same_sample_no_drift_and_low_light_sample_drifts(pool, reference):
    # given the calibration pool's own frames, then no feature drifts
    config = DriftConfig(min_samples=30, psi_threshold=THRESHOLD)
    same = compare_samples(reference, reference, config)
    assert not same.recalibrate and same.max_psi < 1e-9, f"same sample: {same.metrics()}"
    # when production is the same scenes under failed lighting, tagged low_light, then recalibrate is flagged
    table = pq.read_table(pool, columns=["id", "image"]).to_pylist()
    dark = FeatureSample()
    for row in table:
        dark.add(row["id"], _darken(row["image"]), "low_light")
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


@pytest.mark.slow
def test_drift_monitor_flow_logs_psi_and_verdict_to_mlflow(pool, tmp_path, monkeypatch):
    # given a release's scores.parquet over the pool and a darkened production pool, when the flow body runs,
    # then PSI per feature and drift.recalibrate land in MLflow and the report file
    from mlflow import MlflowClient

    from flows.drift_monitor import drift_monitor

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    table = pq.read_table(pool)
    scores = tmp_path / "scores.parquet"
    pq.write_table(table.select(["id", "condition"]), scores)
    dark_dir = tmp_path / "production"
    dark_dir.mkdir()
    images = []
    for jpeg in table.column("image").to_pylist():
        buffer = io.BytesIO()
        Image.fromarray(_darken(jpeg)).save(buffer, format="JPEG", quality=95)
        images.append(buffer.getvalue())
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", [images]), dark_dir / "p.parquet")
    config = {
        "data": {"data_dir": str(tmp_path / "data"), "synthetic": None},
        "pool": {"uri": str(pool)},
        "gateway": {"models": [{"name": "m", "input_eur_per_mtok": 0.1, "output_eur_per_mtok": 0.1}]},
        "budget": {"cap_eur": 1.0},
        "drift": {"min_samples": 30},
        "tracking": {"experiment": "drift-test"},
    }
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(config))

    summary = drift_monitor.fn(
        config_path=str(config_path), reference_path=str(scores), production_uri=str(dark_dir), psi_threshold=THRESHOLD
    )

    assert summary.recalibrate and "brightness" in summary.drifted, f"darkened production drifts: {summary}"
    assert summary.n_reference == summary.n_production == 120, f"whole pool both sides: {summary}"
    uri = f"sqlite:///{(tmp_path / 'data' / 'mlflow.db').resolve()}"
    run = MlflowClient(uri).get_run(summary.mlflow_run_id)
    assert run.data.metrics["drift.recalibrate"] == 1.0, f"verdict metric: {run.data.metrics}"
    assert run.data.metrics["drift.psi.brightness"] > THRESHOLD, f"PSI per feature: {run.data.metrics}"
    assert run.data.tags["drift.recalibrate"] == "true", f"verdict tag: {run.data.tags}"
    report = json.loads(Path(summary.report_path).read_text())
    assert set(report["features"]) >= {"difficulty", "brightness", "condition"}, f"report features: {report}"


def test_scheduled_monitor_without_a_reference_uses_the_newest_release_run(tmp_path):
    # given two release runs under data_dir/runs, the newer written last, and a newer ablation run
    from flows.drift_monitor import resolve_reference
    from tasks.config import TailcalConfig

    config = TailcalConfig.model_validate(
        {
            "data": {"data_dir": str(tmp_path), "synthetic": None},
            "pool": {"uri": str(tmp_path / "pool")},
            "gateway": {"models": [{"name": "m", "input_eur_per_mtok": 0.1, "output_eur_per_mtok": 0.1}]},
            "budget": {"cap_eur": 1.0},
        }
    )
    with pytest.raises(ConfigError, match="run the release cycle first"):
        resolve_reference(config, None, None, "pool")
    for run_id, mtime, kind in (("old", 1_000, "release"), ("new", 2_000, "release"), ("ablation", 3_000, "ablation")):
        path = tmp_path / "runs" / run_id / "scores.parquet"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
        (path.parent / ("report.md" if kind == "release" else "ablation.md")).write_text("x")
    # when no reference is named (as on the schedule), then the newest run's scores.parquet is used
    assert resolve_reference(config, None, None, "pool").parent.name == "new", "newest release run, not the ablation"
    assert resolve_reference(config, None, "old", "pool").parent.name == "old", "a named run wins"
