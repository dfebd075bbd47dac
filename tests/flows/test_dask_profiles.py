"""Pool profiling for `coverage` on Dask: with `scoring.runner: dask` the pool's activation
profiles are taken in shards on a local cluster of two worker processes, and they, and the
coverage selection made from them, equal the in-process path's."""

import numpy as np
import pyarrow as pa
import pytest
from prefect import flow, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.scoring import pool_profile_stage
from tasks.config import RuntimeEnv, SelectionConfig, SyntheticConfig, TailcalConfig
from tasks.selection import SelectionInput, select_calibration_set
from tasks.synth.write import write_pool
from tests.support import embedded_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@flow(name="profile-pool")
def _profile(tree: dict, fp_ir: str):
    return pool_profile_stage(TailcalConfig.model_validate(tree), RuntimeEnv(), fp_ir)


def _profiled(tree: dict, fp_ir: str):
    """The profiles, and the names of the task runs that took them."""
    state = _profile(tree, fp_ir, return_state=True)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    return state.result(), sorted(run.name.rsplit("-", 1)[0] for run in runs)


def test_profiles_on_dask_give_the_in_process_selection(fp16_ir, tmp_path, monkeypatch):
    # given a tiny pool, cut into three shards of at most 16 candidates
    monkeypatch.delenv("TAILCAL_DASK_ADDRESS", raising=False)
    write_pool(SyntheticConfig(seed=41), tmp_path / "pool", n=40)
    tree = embedded_config(pool={"uri": str(tmp_path / "pool")}, scoring={"shard_size": 16, "dask_workers": 2})

    # when the pool is profiled in this process and on two Dask worker processes
    here, tasks_here = _profiled(tree, str(fp16_ir))
    on_dask, tasks_on_dask = _profiled({**tree, "scoring": {**tree["scoring"], "runner": "dask"}}, str(fp16_ir))
    assert tasks_here == ["activation-profiles"], f"one task in this process: {tasks_here}"
    assert tasks_on_dask == ["profile-shard"] * 3, f"a task per shard on Dask: {tasks_on_dask}"

    # then the profiles are the same, row for row in pool order
    assert on_dask.ids == here.ids and len(here.ids) == 40, "every candidate once, in pool order"
    assert on_dask.layer_names == here.layer_names, "the same profiled layers"
    assert np.array_equal(on_dask.values, here.values), "each image's min/max per layer is the same"

    # and so is the coverage selection made from them
    rng = np.random.default_rng(3)
    pool = SelectionInput.from_table(pa.table({"id": list(here.ids), "difficulty": rng.random(40)}))
    section = SelectionConfig(strategy="coverage", k=12, seed=0)
    chosen_here = select_calibration_set(pool, section, here)
    chosen_on_dask = select_calibration_set(pool, section, on_dask)
    assert chosen_on_dask.ids == chosen_here.ids, "the same calibration set, in the same order"
