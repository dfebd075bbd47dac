"""The drift-monitor flow body end to end on a small real pool with SQLite MLflow."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tests.support import DRIFT_THRESHOLD as THRESHOLD
from tests.support import ROOT, darken

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_drift_monitor_flow_logs_psi_and_verdict_to_mlflow(drift_pool, tmp_path, monkeypatch):
    # given a release's scores.parquet over the pool and a darkened production pool, when the flow body runs,
    # then PSI per feature and drift.recalibrate land in MLflow and the report file
    from mlflow import MlflowClient

    from flows.drift_monitor import drift_monitor

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    table = pq.read_table(drift_pool)
    scores = tmp_path / "scores.parquet"
    pq.write_table(table.select(["id", "condition"]), scores)
    dark_dir = tmp_path / "production"
    dark_dir.mkdir()
    images = []
    for jpeg in table.column("image").to_pylist():
        buffer = io.BytesIO()
        Image.fromarray(darken(jpeg)).save(buffer, format="JPEG", quality=95)
        images.append(buffer.getvalue())
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", [images]), dark_dir / "p.parquet")
    config = {
        "data": {"data_dir": str(tmp_path / "data"), "synthetic": None},
        "pool": {"uri": str(drift_pool)},
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

    report = summary.report
    assert report.recalibrate and "brightness" in report.drifted, f"darkened production drifts: {summary}"
    assert report.n_reference == report.n_production == 120, f"whole pool both sides: {summary}"
    uri = f"sqlite:///{(tmp_path / 'data' / 'mlflow.db').resolve()}"
    run = MlflowClient(uri).get_run(summary.mlflow_run_id)
    assert run.data.metrics["drift.recalibrate"] == 1.0, f"verdict metric: {run.data.metrics}"
    assert run.data.metrics["drift.psi.brightness"] > THRESHOLD, f"PSI per feature: {run.data.metrics}"
    assert run.data.tags["drift.recalibrate"] == "true", f"verdict tag: {run.data.tags}"
    written = json.loads(Path(summary.report_path).read_text())
    assert set(written["features"]) >= {"difficulty", "brightness", "condition"}, f"report features: {written}"
    assert "recalibrate: True" in summary.describe(), "the command line prints the verdict"


def test_without_production_frames_the_monitor_refuses_instead_of_comparing_the_pool_with_itself(tmp_path, capsys):
    # given a config naming no production frames (neither drift.production_uri nor --production-uri)
    from flows.cli import main

    config = {
        "data": {"data_dir": str(tmp_path / "data"), "synthetic": None},
        "pool": {"uri": str(tmp_path / "pool")},
        "gateway": {"models": [{"name": "m", "input_eur_per_mtok": 0.1, "output_eur_per_mtok": 0.1}]},
        "budget": {"cap_eur": 1.0},
    }
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # when the monitor runs
    code = main(["drift", "--config", str(config_path)])
    # then it stops with one line naming the setting and the flag, before Prefect starts
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert code == 2 and len(lines) == 1, f"one line, nothing started: {lines}"
    assert "drift.production_uri" in lines[0] and "--production-uri" in lines[0], lines[0]


def test_the_scheduled_monitor_names_its_production_frames():
    # the daily deployment runs on configs/release.yaml: it must say where production frames land
    from tasks.config import load_config

    deployment = next(
        d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] if d["name"] == "drift-monitor"
    )
    config = load_config(ROOT / deployment["parameters"]["config_path"])
    assert config.drift.production_uri and config.drift.production_uri != config.pool.uri, config.drift


def test_an_error_inside_a_flow_is_the_last_line_on_stderr_after_prefects_shutdown_logs(tmp_path):
    # given a drift check whose reference is missing: the error comes from inside the flow, after
    # Prefect's temporary server started (its "Stopping temporary server" log comes at exit)
    config = tmp_path / "drift.yaml"
    tree = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    tree["data"]["data_dir"] = str(tmp_path / "data")
    config.write_text(yaml.safe_dump(tree))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    script = Path(sys.executable).parent / "tailcal"
    # when it runs from the console script and from the older `python -m flows.<module>` entry point
    for command in ([str(script), "drift"], [sys.executable, "-m", "flows.drift_monitor"]):
        result = subprocess.run(
            [*command, "--config", str(config), "--production-uri", str(tmp_path / "production")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        # then it exits 2 and the last line on stderr is tailcal's, saying what to fix
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2, f"{command[-1]}: exit {result.returncode}\n{result.stderr[-2000:]}"
        assert last.startswith("tailcal: ") and "no release run" in last, f"{command[-1]}: last line {last!r}"
