"""tasks.tracking against a real MLflow store (SQLite in a temporary folder): runs and nested
runs end FINISHED or FAILED, params are batched past MLflow's 100-per-call limit, None metrics
are skipped, the config flattens to `section.key` params, the pool is recorded as a dataset
input, and MLFLOW_TRACKING_URI redirects everything to another store."""

import hashlib
import itertools
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import RestException

from tasks import tracking
from tasks.config import RuntimeEnv, load_config
from tests.support import ROOT

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
_names = itertools.count()


def _sqlite_uri(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One store for the module (creating an MLflow database takes about a second); each test
    uses its own experiment."""
    return tmp_path_factory.mktemp("tracking-data")


@pytest.fixture
def env(monkeypatch) -> RuntimeEnv:
    """The embedded default: no MLFLOW_TRACKING_URI, so runs go to SQLite in the data dir."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return RuntimeEnv()


@pytest.fixture
def experiment() -> str:
    return f"tailcal-test-{next(_names)}"


@pytest.fixture
def client(data_dir) -> MlflowClient:
    return MlflowClient(_sqlite_uri(data_dir))


def test_run_creates_the_experiment_and_a_finished_run_with_params_and_tags(env, data_dir, experiment, client):
    # given no experiment of that name yet
    assert client.get_experiment_by_name(experiment) is None, "precondition: a fresh experiment name"
    # when a run's body completes
    with tracking.run(
        env, data_dir, experiment, "release-1", tags={"stage": "test"}, params={"selection.k": "64"}
    ) as handle:
        status_inside = client.get_run(handle.run_id).info.status
    # then
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment} should have been created"
    assert handle.experiment_id == found.experiment_id, f"handle points at the experiment: {handle}"
    assert handle.tracking_uri == _sqlite_uri(data_dir), f"SQLite in the data dir: {handle.tracking_uri}"
    assert found.artifact_location == (data_dir / "mlartifacts").resolve().as_uri(), (
        f"artefacts under the data dir: {found.artifact_location}"
    )
    run = client.get_run(handle.run_id)
    assert status_inside == "RUNNING", f"the run is open inside the with: {status_inside}"
    assert run.info.status == "FINISHED", f"a completed body ends FINISHED: {run.info.status}"
    assert run.info.run_name == "release-1", f"run name: {run.info.run_name}"
    assert run.data.params == {"selection.k": "64"}, f"params logged: {run.data.params}"
    assert run.data.tags.get("stage") == "test", f"tags logged: {run.data.tags}"


def test_a_second_run_reuses_the_experiment(env, data_dir, experiment, client):
    with tracking.run(env, data_dir, experiment, "first", tags={}) as first:
        pass
    with tracking.run(env, data_dir, experiment, "second", tags={}) as second:
        pass
    assert first.experiment_id == second.experiment_id, f"same experiment reused: {first} vs {second}"
    runs = client.search_runs([first.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["first", "second"], f"both runs in one experiment: {runs}"


@pytest.mark.parametrize("error", [RuntimeError("stage broke"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_an_exception_in_the_body_fails_the_run_and_propagates(env, data_dir, experiment, client, error):
    # when the body raises
    with (
        pytest.raises(type(error)),
        tracking.run(env, data_dir, experiment, "doomed", tags={}) as handle,
    ):
        raise error
    # then the run is FAILED, not left RUNNING or marked FINISHED
    status = client.get_run(handle.run_id).info.status
    assert status == "FAILED", f"a raising body ends FAILED: {status}"


def test_child_run_nests_under_the_parent_and_fails_on_error(env, data_dir, experiment, client):
    # given a parent run with two children, one of which raises
    with tracking.run(env, data_dir, experiment, "ablation", tags={}) as parent:
        with tracking.child_run(parent, "cell-ok", tags={"cell": "ok"}, params={"k": "64"}) as good:
            pass
        with (
            pytest.raises(ValueError, match="bad cell"),
            tracking.child_run(parent, "cell-bad", tags={"cell": "bad"}, params={"k": "128"}) as bad,
        ):
            raise ValueError("bad cell")
    # then
    good_run, bad_run = client.get_run(good.run_id), client.get_run(bad.run_id)
    for child in (good_run, bad_run):
        assert child.data.tags.get("mlflow.parentRunId") == parent.run_id, f"nested under parent: {child.data.tags}"
        assert child.info.experiment_id == parent.experiment_id, f"child in parent's experiment: {child.info}"
    assert good_run.info.status == "FINISHED", f"completed child FINISHED: {good_run.info.status}"
    assert bad_run.info.status == "FAILED", f"raising child FAILED: {bad_run.info.status}"
    assert good_run.data.params == {"k": "64"} and good_run.data.tags.get("cell") == "ok", (
        f"child params/tags: {good_run.data}"
    )
    assert bad_run.data.params == {"k": "128"}, f"params logged before the failure: {bad_run.data.params}"
    assert client.get_run(parent.run_id).info.status == "FINISHED", "a caught child failure leaves the parent FINISHED"


def test_an_interrupt_inside_a_child_run_fails_child_and_parent(env, data_dir, experiment, client):
    # when Ctrl-C arrives while a nested run is open
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.run(env, data_dir, experiment, "ablation", tags={}) as parent,
        tracking.child_run(parent, "cell", tags={}, params={}) as child,
    ):
        raise KeyboardInterrupt
    # then neither run is left RUNNING
    statuses = (client.get_run(child.run_id).info.status, client.get_run(parent.run_id).info.status)
    assert statuses == ("FAILED", "FAILED"), f"(child, parent) after an interrupt: {statuses}"


def test_log_params_batches_more_than_100_params(env, data_dir, experiment, client, monkeypatch):
    # given 250 params, more than MLflow's REST API accepts in one log_batch call
    params = {f"section{i // 10}.key{i}": str(i) for i in range(250)}
    # and a pass-through recorder on the real client (MLflow 3's client re-chunks by itself, so the
    # store alone cannot tell whether tailcal batches: record what tailcal hands to the client)
    sizes: list[int] = []
    real_log_batch = MlflowClient.log_batch

    def recording_log_batch(self, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
        sizes.append(len(params))
        return real_log_batch(self, run_id, metrics, params, tags, *args, **kwargs)

    # when
    with tracking.run(env, data_dir, experiment, "many-params", tags={}) as handle, monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "log_batch", recording_log_batch)
        tracking.log_params(handle, params)
    # then every one is stored, sent in calls of at most 100
    stored = client.get_run(handle.run_id).data.params
    assert stored == params, f"all 250 params stored; missing {len(set(params) - set(stored))}"
    assert sizes == [100, 100, 50], f"params sent in batches of at most 100: {sizes}"


def test_log_metrics_skips_none_and_logs_the_rest(env, data_dir, experiment, client):
    with tracking.run(env, data_dir, experiment, "metrics", tags={}) as handle:
        tracking.log_metrics(handle, {"gap.map": 0.0125, "int8.latency_ms": None, "fp16.map": 1}, step=3)
    run = client.get_run(handle.run_id)
    assert run.data.metrics == {"gap.map": 0.0125, "fp16.map": 1.0}, f"None skipped, not zeroed: {run.data.metrics}"
    history = client.get_metric_history(handle.run_id, "gap.map")
    assert [m.step for m in history] == [3], f"logged at the given step: {history}"


def test_config_params_flattens_the_config_without_secrets(monkeypatch):
    # given secrets present in the environment, which configs must never carry
    secret = "sk-test-secret-value-123"
    monkeypatch.setenv("TAILCAL_GATEWAY_KEY", secret)
    monkeypatch.setenv("REDIS_URL", f"redis://:{secret}@localhost:6379/0")
    config = load_config(REPO / "configs" / "demo.yaml")
    # when
    params = tracking.config_params(config)
    # then
    assert params["selection.k"] == "256", f"selection.k from demo.yaml: {params.get('selection.k')}"
    assert params["data.synthetic.pool_size"] == "2000", f"nested sections joined by dots: {sorted(params)[:5]}"
    assert params["tracking.experiment"] == "tailcal-demo", f"tracking section: {params.get('tracking.experiment')}"
    assert params["quantization.range_estimator"] == "MINMAX", f"enum as its value: {params}"
    assert all(isinstance(v, str) for v in params.values()), "MLflow params are strings"
    assert not any(isinstance(v, dict) for v in params.values()), "sections are flattened, not stringified dicts"
    assert {key.split(".")[0] for key in params} >= {"data", "pool", "gateway", "budget", "scoring", "selection"}, (
        f"every section present: {sorted({key.split('.')[0] for key in params})}"
    )
    secret_words = ("secret", "password", "token", "api_key", "apikey", "credential")
    flagged = [key for key in params if any(word in key.lower() for word in secret_words)]
    assert flagged == [], f"no secret-looking keys in params: {flagged}"
    leaked = [key for key, value in params.items() if secret in value]
    assert leaked == [], f"environment secrets must not reach params: {leaked}"


def test_log_pool_dataset_records_a_dataset_input_with_the_digest(env, data_dir, experiment, client):
    # given a content digest of the pool (sha256 hex, longer than MLflow's 36-character digest field)
    digest = hashlib.sha256(b"pool manifest v1").hexdigest()
    sample = pd.DataFrame({"image_id": ["a", "b", "c"], "difficulty": [0.1, 0.5, 0.9]})
    # when
    with tracking.run(env, data_dir, experiment, "pool", tags={}) as handle:
        tracking.log_pool_dataset(handle, "demo-pool", "/data/demo/pool", digest, sample)
    # then
    inputs = client.get_run(handle.run_id).inputs.dataset_inputs
    assert len(inputs) == 1, f"one dataset input: {inputs}"
    dataset = inputs[0].dataset
    assert dataset.name == "demo-pool", f"dataset name: {dataset.name}"
    assert dataset.digest == digest[:36], f"the given content digest (MLflow keeps 36 chars): {dataset.digest}"
    assert "/data/demo/pool" in dataset.source, f"source recorded: {dataset.source}"
    context = {tag.key: tag.value for tag in inputs[0].tags}
    assert context.get("mlflow.data.context") == "calibration-pool", f"input context tag: {context}"


def test_mlflow_tracking_uri_sends_the_run_to_that_store(monkeypatch, tmp_path, experiment):
    # given MLFLOW_TRACKING_URI naming another SQLite store
    other = tmp_path / "server"
    other.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _sqlite_uri(other))
    data_dir = tmp_path / "data"
    # when
    with tracking.run(RuntimeEnv(), data_dir, experiment, "remote", tags={}, params={"a": "1"}) as handle:
        pass
    # then the run lives in that store, and nothing was written to the data dir's store
    assert handle.tracking_uri == _sqlite_uri(other), f"handle uses the env URI: {handle.tracking_uri}"
    run = MlflowClient(_sqlite_uri(other)).get_run(handle.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"}, f"run in the env store: {run.info}"
    assert not (data_dir / "mlflow.db").exists(), "no SQLite store in the data dir when MLFLOW_TRACKING_URI is set"


def test_config_params_hold_no_webhook_token_and_no_url_password(tmp_path):
    # given a config whose webhook URL carries its token in the path
    from tasks.config import load_config

    text = (ROOT / "configs" / "demo.yaml").read_text()
    text = text.replace("budget:\n", "budget:\n  webhook_url: https://hooks.example.com/services/T000/SECRETHOOK\n", 1)
    path = tmp_path / "hook.yaml"
    path.write_text(text)
    # when flattened for MLflow
    params = tracking.config_params(load_config(path))
    # then the token is not there, the host is
    assert params["budget.webhook_url"] == "https://hooks.example.com/…", params["budget.webhook_url"]
    assert not any("SECRETHOOK" in value for value in params.values()), "the webhook token leaked into params"


def test_a_run_that_loses_the_race_to_create_its_experiment_uses_the_winners(data_dir, experiment, client, monkeypatch):
    # given another process creates the experiment between this run's look-up and its create
    winner = client.create_experiment(experiment)

    class LateClient(MlflowClient):
        looked = 0

        def get_experiment_by_name(self, name):
            LateClient.looked += 1
            return None if LateClient.looked == 1 else super().get_experiment_by_name(name)

    monkeypatch.setattr(tracking, "MlflowClient", LateClient)
    # when this run starts, then it joins the winner's experiment instead of failing on RESOURCE_ALREADY_EXISTS
    handle = tracking.start_run(_sqlite_uri(data_dir), experiment, None, "late", {})
    assert handle.experiment_id == winner and LateClient.looked == 2, (handle, LateClient.looked)
    assert client.get_run(handle.run_id).info.experiment_id == winner, "the run is in the existing experiment"


def _pool_sample() -> tuple[str, pd.DataFrame]:
    return hashlib.sha256(b"pool manifest v1").hexdigest(), pd.DataFrame({"image_id": ["a", "b"], "x": [0.1, 0.9]})


def test_a_run_that_loses_the_race_to_record_the_pool_links_the_winners_dataset(
    env, data_dir, experiment, client, monkeypatch
):
    # given another run records the same pool between this run's look-up and its insert, so the
    # store refuses this run's insert as the stack's MLflow server did
    digest, sample = _pool_sample()
    with tracking.run(env, data_dir, experiment, "winner", tags={}) as winner:
        tracking.log_pool_dataset(winner, "demo-pool", "/data/demo/pool", digest, sample)
    refused = []

    class RacedClient(MlflowClient):
        def log_inputs(self, run_id, datasets=None, models=None):
            if not refused:
                refused.append(run_id)
                raise RestException(
                    {
                        "error_code": "BAD_REQUEST",
                        "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                        "datasets.name, datasets.digest (Background on this error at: https://sqlalche.me/e/20/gkpj)",
                    }
                )
            return super().log_inputs(run_id, datasets=datasets, models=models)

    monkeypatch.setattr(tracking, "MlflowClient", RacedClient)
    # when this run records the pool, then it is linked to the one dataset both runs share
    with tracking.run(env, data_dir, experiment, "loser", tags={}) as loser:
        tracking.log_pool_dataset(loser, "demo-pool", "/data/demo/pool", digest, sample)
    assert refused == [loser.run_id], "the first insert was refused"
    mine, theirs = (client.get_run(h.run_id).inputs.dataset_inputs for h in (loser, winner))
    assert [d.dataset.digest for d in mine] == [d.dataset.digest for d in theirs] == [digest[:36]], (mine, theirs)
    assert client.get_run(loser.run_id).info.status == "FINISHED"


def test_a_store_error_that_is_not_an_insert_race_is_not_retried(env, data_dir, experiment, monkeypatch):
    # given a store that refuses the dataset for another reason
    digest, sample = _pool_sample()
    calls = []

    class RefusingClient(MlflowClient):
        def log_inputs(self, run_id, datasets=None, models=None):
            calls.append(run_id)
            raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "dataset source too long"})

    monkeypatch.setattr(tracking, "MlflowClient", RefusingClient)
    # when, then the error propagates after one try and fails the run
    with (
        pytest.raises(RestException, match="dataset source too long"),
        tracking.run(env, data_dir, experiment, "refused", tags={}) as handle,
    ):
        tracking.log_pool_dataset(handle, "demo-pool", "/data/demo/pool", digest, sample)
    assert calls == [handle.run_id], f"one try: {calls}"
