"""The release-cycle flow end to end on the embedded default: real Prefect (ephemeral),
real Valkey, the reference scorer over HTTP, real SQLite MLflow."""

import asyncio
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from tests.support import write_config

pytestmark = pytest.mark.e2e

SENTINEL = "sk-tailcal-sentinel-0123456789abcdef"


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("release")
    config_path = write_config(
        work / "e2e.yaml",
        data={"data_dir": str(work / "data"), "synthetic": {"seed": 5, "pool_size": 160, "eval_size": 20}},
        scoring={"passes": 2, "shard_size": 64},
        selection={"k": 32},
        evaluation={"baseline": "first_n"},
        tracking={"experiment": "e2e"},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TAILCAL_GATEWAY_KEY", SENTINEL)
        patch.delenv("REDIS_URL", raising=False)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        from flows.release_cycle import release_cycle

        state = release_cycle(config_path=str(config_path), release_id="e2e-1", return_state=True)
        summary = state.result()
    return summary, work, state


def test_flow_scores_the_pool_and_writes_scores(release_run):
    summary, _, _ = release_run
    scoring = summary.scored.outcome.summary
    assert scoring.candidates == 160 and scoring.failed == 0 and scoring.unscored == 0, f"all scored: {scoring}"
    assert 0 < scoring.cache_hit_rate < 1, f"bursts give some hits: {scoring.cache_hit_rate}"
    assert scoring.spearman is not None and scoring.spearman > 0.5, f"passes agree: {scoring.spearman}"
    table = pq.read_table(summary.scored.scores_path)
    assert table.num_rows == 160 and {"difficulty", "pass_0", "pass_1", "condition"} <= set(table.schema.names), (
        f"scores.parquet columns: {table.schema.names}"
    )


def test_mlflow_run_has_params_metrics_dataset_and_artifacts(release_run):
    summary, _, _ = release_run
    client = MlflowClient(summary.mlflow_tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED", run.info.status
    assert run.data.params["selection.k"] == "32" and run.data.params["scoring.prompt"] == "difficulty-v1", "params"
    assert run.data.tags["release_id"] == "e2e-1" and run.data.tags["prefect.flow_run_id"], "tags"
    assert run.data.metrics["scoring.candidates"] == 160, run.data.metrics
    assert run.data.metrics["scoring.spend_eur"] > 0, "spend is logged"
    digests = [d.dataset.digest for d in run.inputs.dataset_inputs]
    pool_digest = summary.scored.outcome.ingest.pool_digest
    assert digests and digests[0] == pool_digest[:36], f"pool dataset with its digest: {digests}"
    names = {a.path for a in client.list_artifacts(summary.mlflow_run_id)}
    assert {"scores.parquet", "selection.parquet", "report.md", "plots", "ir"} <= names, names
    irs = {a.path for a in client.list_artifacts(summary.mlflow_run_id, "ir")}
    assert {"ir/detector_fp16.xml", "ir/detector_int8.xml"} <= irs, f"both IRs are logged: {irs}"
    assert "ir/categories.json" in irs, f"what the IRs' labels mean is logged beside them: {irs}"
    metrics = run.data.metrics
    for name in ("fp16.map", "int8.map", "gap.map", "clipping.max_pct", "int8_vs_fp16.throughput_ratio"):
        assert name in metrics, f"{name} missing from {sorted(metrics)}"
    assert metrics["gap.map"] == pytest.approx(metrics["fp16.map"] - metrics["int8.map"]), "gap is FP16 − INT8"
    assert any(name.startswith("gap.map.") for name in metrics), "per-condition gaps are logged"


def test_the_gap_is_split_into_weight_and_activation_parts_with_intervals(release_run):
    summary, _, _ = release_run
    metrics = MlflowClient(summary.mlflow_tracking_uri).get_run(summary.mlflow_run_id).data.metrics
    weight, activation = metrics["gap_part.weights"], metrics["gap_part.activations"]
    assert weight + activation == pytest.approx(metrics["gap.map"], abs=1e-9), "the two parts add up to the gap"
    for part in ("weights", "activations"):
        low, high = metrics[f"gap_part.{part}.ci_low"], metrics[f"gap_part.{part}.ci_high"]
        assert low <= metrics[f"gap_part.{part}"] <= high, f"the {part} part lies in its interval [{low}, {high}]"
    assert any(name.startswith("quantizer.") and name.endswith(".clipped_pct") for name in metrics), sorted(metrics)
    assert "  gap split     weights " in summary.describe(), f"the summary has its line:\n{summary.describe()}"
    report = (Path(summary.run_dir) / "report.md").read_text()
    assert "## Where the gap comes from" in report, f"report.md explains the parts:\n{report}"


def test_int8_model_is_calibrated_on_exactly_the_selected_k(release_run):
    summary, _, _ = release_run
    selection = pq.read_table(Path(summary.run_dir) / "selection.parquet")
    assert selection.num_rows == 32 and len(set(selection.column("id").to_pylist())) == 32, "K distinct ids"
    assert summary.metrics["selection.k"] == 32, "K is logged"


def test_first_n_is_quantized_beside_the_chosen_set_and_logged_under_its_own_prefix(release_run):
    summary, _, _ = release_run
    # given evaluation.baseline first_n: its pick is the pool's first 32 by position, not the chosen set
    scores = pq.read_table(summary.scored.scores_path).sort_by("position")
    picked = pq.read_table(Path(summary.run_dir) / "baseline-first_n" / "selection.parquet").column("id").to_pylist()
    assert picked == scores.column("id").to_pylist()[:32], "first_n takes the first K in pool order"
    assert (Path(summary.run_dir) / "baseline-first_n" / "detector_int8.xml").exists(), "its own INT8 IR"
    # then MLflow holds its gap and the paired difference under baseline.first_n.*
    metrics = MlflowClient(summary.mlflow_tracking_uri).get_run(summary.mlflow_run_id).data.metrics
    gap = metrics["baseline.first_n.gap.map"]
    assert gap == pytest.approx(metrics["fp16.map"] - metrics["baseline.first_n.int8.map"]), "its gap is FP16 − INT8"
    difference = metrics["baseline.first_n.gap_difference"]
    assert difference == pytest.approx(metrics["gap.map"] - gap), "difference = chosen gap − first_n's gap"
    low, high = metrics["baseline.first_n.gap_difference.ci_low"], metrics["baseline.first_n.gap_difference.ci_high"]
    assert low <= difference <= high, f"the paired interval holds the estimate: {low} ≤ {difference} ≤ {high}"
    assert not any(name.startswith("baseline.") and "gap_part" in name for name in metrics), "no gap split for it"
    # and the summary prints both gaps side by side, the report says it too
    line = next(line for line in summary.describe().splitlines() if line.startswith("  vs first_n"))
    assert f"gap {metrics['gap.map']:+.4f} (hard_tail_mix) vs {gap:+.4f} (first_n" in line, line
    assert f"difference {difference:+.4f} [{low:+.4f}, {high:+.4f}]" in line, line
    report = (Path(summary.run_dir) / "report.md").read_text()
    assert "Baseline `first_n`" in report, f"report.md names the baseline:\n{report}"


def test_no_secret_value_appears_anywhere_in_the_run(release_run):
    summary, work, state = release_run
    client = MlflowClient(summary.mlflow_tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    texts = [str(run.data.params), str(run.data.tags), str(run.data.metrics)]
    assert not any(SENTINEL in t for t in texts), "the key leaked into params, tags or metrics"
    artifact_root = Path(run.info.artifact_uri.removeprefix("file://"))
    leaked = [p for p in artifact_root.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert not leaked, f"the key leaked into artefacts: {leaked}"
    run_files = [p for p in (work / "data" / "runs").rglob("*") if p.is_file()]
    assert run_files and not any(SENTINEL.encode() in p.read_bytes() for p in run_files), "run dir is clean"

    from prefect.client.orchestration import get_client

    async def flow_run_parameters():
        async with get_client() as prefect:
            return (await prefect.read_flow_run(state.state_details.flow_run_id)).parameters

    assert SENTINEL not in str(asyncio.run(flow_run_parameters())), "the key leaked into Prefect parameters"
