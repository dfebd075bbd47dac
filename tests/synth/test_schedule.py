"""Realistic pools: conditions in runs tied to time and line, seeded, exporter order; and a
production (eval) mix that differs from the pool's."""

import itertools
import json
from collections import Counter

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tasks.config import SyntheticConfig
from tasks.synth.render import CONDITION_WEIGHTS, CONDITIONS
from tasks.synth.schedule import SOURCES, plan_conditions, plan_scenes
from tasks.synth.write import file_digest, scene_frames, write_labelled_split, write_pool

pytestmark = pytest.mark.unit

RUNS = SyntheticConfig(seed=2, ordering="runs")
IID = SyntheticConfig(seed=2)
POOL_CODE = 1  # the pool split's generator stream (write._SPLIT_CODES)


def mean_run_length(sequence: list[str]) -> float:
    """Items per maximal run of equal neighbours."""
    return len(sequence) / sum(1 for _ in itertools.groupby(sequence))


def per_line_run_length(table) -> float:
    """Mean run length of the condition along each line's own capture sequence, over all lines' runs."""
    rows = sorted(table.select(["source", "captured_at", "condition"]).to_pylist(), key=lambda r: r["captured_at"])
    runs = frames = 0
    for line in SOURCES:
        sequence = [r["condition"] for r in rows if r["source"] == line]
        frames += len(sequence)
        runs += sum(1 for _ in itertools.groupby(sequence))
    return frames / runs


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """The same seed's pool under both orderings, 300 frames each."""
    out = tmp_path_factory.mktemp("orderings")
    for config, name in ((RUNS, "runs"), (IID, "iid")):
        write_pool(config, out / name, n=300, rows_per_file=120)
    return {name: ds.dataset(out / name, format="parquet").to_table() for name in ("runs", "iid")} | {"dir": out}


def test_the_runs_ordering_is_seeded(pools, tmp_path):
    # given the same seed again, then the pool is byte-identical
    write_pool(RUNS, tmp_path / "again", n=300, rows_per_file=120)
    first = sorted((pools["dir"] / "runs").glob("*.parquet"))
    assert [file_digest(p) for p in first] == [file_digest(p) for p in sorted((tmp_path / "again").glob("*.parquet"))]
    # given another seed, then the runs fall elsewhere
    a = plan_conditions(RUNS, POOL_CODE, 2000)
    b = plan_conditions(RUNS.model_copy(update={"seed": 3}), POOL_CODE, 2000)
    assert a == plan_conditions(RUNS, POOL_CODE, 2000), "the plan is a function of the seed"
    assert a != b, "seeds 2 and 3 must plan different runs"


def test_runs_are_far_longer_than_under_iid(pools):
    # given the same seed's pool under both orderings, when each line's conditions are read in capture order
    runs, iid = per_line_run_length(pools["runs"]), per_line_run_length(pools["iid"])
    rows_runs = mean_run_length(pools["runs"].column("condition").to_pylist())
    rows_iid = mean_run_length(pools["iid"].column("condition").to_pylist())
    print(
        f"mean run length per line: runs {runs:.1f} vs iid {iid:.2f}; in pool rows: {rows_runs:.2f} vs {rows_iid:.2f}"
    )
    # then a line stays in one condition for many frames, where iid changes every burst or two
    # (300 frames are ~47 scenes per line: most conditions' quotas there are shorter than run_length)
    assert runs >= 3 * iid, f"per-line runs {runs:.1f} frames should be ≥ 3× iid's {iid:.2f}"
    assert rows_runs > rows_iid, f"the pool's rows hold longer runs too: {rows_runs:.2f} vs {rows_iid:.2f}"
    # and at the demo's size (2,000 frames) a line's runs last for dozens of scenes, where an iid
    # line changes condition after 1 / (1 − Σ p²) ≈ 1.6 scenes on average
    plan = plan_conditions(RUNS, POOL_CODE, 1330)
    planned = np.mean([mean_run_length(plan[line::4]) for line in range(4)])
    iid_expected = 1 / (1 - sum(w * w for w in CONDITION_WEIGHTS.values()))
    print(f"demo-size plan: {planned:.1f} scenes per run on a line vs {iid_expected:.2f} under iid")
    assert planned >= 10 * iid_expected, f"{planned:.1f} scenes per run vs iid's {iid_expected:.2f}"


def test_runs_keep_the_mix_exactly_and_shared_conditions_hit_every_line(pools):
    scenes = 4000
    plan = plan_conditions(RUNS, POOL_CODE, scenes)
    counts = Counter(plan)
    for condition, weight in CONDITION_WEIGHTS.items():
        # quotas are rounded per line (own conditions) or per slot of all lines (shared ones)
        assert abs(counts[condition] - weight * scenes) <= 8, f"{condition}: {counts[condition]} vs {weight * scenes}"
    slots = [plan[i : i + len(SOURCES)] for i in range(0, scenes, len(SOURCES))]
    for slot in slots:
        shared = {c for c in slot if c in RUNS.shared_conditions}
        assert not shared or len(set(slot)) == 1, f"a shared condition hits every line at once: {slot}"
    own = [c for c in CONDITIONS if c not in RUNS.shared_conditions and c != "normal"]
    lines_in_own_runs = [{plan[i] for i in range(line, scenes, 4)} & set(own) for line in range(4)]
    assert all(lines_in_own_runs), f"each line has its own runs of the other conditions: {lines_in_own_runs}"
    # and a small pool still holds every condition
    assert set(pools["runs"].column("condition").to_pylist()) == set(CONDITIONS), "300 frames hold all seven"


def test_files_and_rows_follow_capture_time_and_ids_name_the_line(pools):
    files = sorted((pools["dir"] / "runs").glob("*.parquet"))
    assert len(files) == 3, "300 rows at 120 per file make 3 part files"
    rows = [r for f in files for r in pq.read_table(f, columns=["id", "source", "captured_at"]).to_pylist()]
    times = [r["captured_at"] for r in rows]
    assert times == sorted(times) and len(set(times)) == len(times), "file then row order is capture order"
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(r["id"].startswith(r["source"] + "-") for r in rows), ids[:4]
    assert sorted(ids) != ids, "ids sort by line, not by capture time: pool order lives in the rows only"
    gaps = {round((b - a).total_seconds()) for a, b in itertools.pairwise(times[::10])}
    assert max(gaps) >= 2, "scenes are scene_interval_s apart"


def test_a_scene_has_the_same_geometry_under_either_ordering():
    plans = plan_scenes(RUNS, POOL_CODE, 60)
    for plan in plans[:25]:
        iid = scene_frames(IID, "pool", plan.index, bursts=True)[0]
        runs = scene_frames(RUNS, "pool", plan.index, bursts=True, plan=plan)
        assert runs[0].surface == iid.surface, f"scene {plan.index}: the ordering changes conditions, not scenes"
        assert runs[0].condition == plan.condition and len(runs) == plan.frames, "the plan sets condition and burst"


def test_the_eval_split_follows_its_own_mix_and_leaves_the_pool_alone(tmp_path):
    # given production that sees low light three times as often as normal frames, and nothing else
    shifted = IID.model_copy(update={"eval_conditions": {"low_light": 3.0, "normal": 1.0}})
    n = 80
    stats = write_labelled_split(shifted, "eval", tmp_path / "eval", n=n)
    conditions = Counter(image["condition"] for image in json.loads(stats.annotations_path.read_text())["images"])
    # then the eval split holds only those, low light at 3/4 within sampling error (3σ ≈ 0.15)
    assert set(conditions) == {"low_light", "normal"}, f"only the conditions of the eval mix: {conditions}"
    share = conditions["low_light"] / n
    assert abs(share - 0.75) <= 3 * np.sqrt(0.75 * 0.25 / n), f"low_light share {share:.2f}, expected 0.75"
    # and the pool of the same config is unchanged by the eval mix
    write_pool(shifted, tmp_path / "a", n=20)
    write_pool(IID, tmp_path / "b", n=20)
    assert file_digest(tmp_path / "a" / "part-00000.parquet") == file_digest(tmp_path / "b" / "part-00000.parquet")


def test_the_synthetic_conditions_are_the_configs_vocabulary():
    from typing import get_args

    from tasks.config import SyntheticCondition

    assert get_args(SyntheticCondition) == CONDITIONS, "config and renderer must name the same conditions"
