"""Prefect tasks shared by the flows: each wraps one stage function of `tasks/` and adds nothing.

torch, OpenVINO and litellm are imported inside the tasks: `prefect deploy` imports every
entrypoint, and those imports take seconds. Tasks pass big in-memory values (images, the
eval split), so none of them hashes its inputs for Prefect's cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from tasks.config import (
    DataConfig,
    DetectorConfig,
    EvaluationConfig,
    PoolConfig,
    QuantizationConfig,
    RuntimeEnv,
    SelectionConfig,
    section_with,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from tasks.calibration.clipping import ClippingReport
    from tasks.calibration.decomposition import GapDecomposition
    from tasks.calibration.profiles import ActivationProfiles
    from tasks.calibration.quantize import QuantizeResult
    from tasks.detection.runtime import Speed
    from tasks.evaluation.comparison import BaselineComparison, Comparison
    from tasks.evaluation.evaluate import EvalResult
    from tasks.evaluation.split import EvalSplit
    from tasks.selection import SelectionOutcome


def flow_run_tags() -> dict[str, str]:
    """MLflow tags that link a run to the Prefect flow run that made it.

    The link (`prefect.flow_run_url`) is set only when `PREFECT_UI_URL` names a UI, as it does
    under a Prefect server: the ephemeral API has none, and Prefect would format "None/flow-runs/…".
    """
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or "")}
    url = flow_run.get_flow_run_ui_url()
    if url and url.startswith(("http://", "https://")):
        tags["prefect.flow_run_url"] = url
    return tags


@task(name="prepare-benchmark")
def prepare_benchmark(data: DataConfig) -> int | None:
    """Check the data directory, and generate the synthetic benchmark when the config asks for
    one; return the pool size."""
    from tasks.services import data_directory
    from tasks.synth.write import ensure_benchmark

    data_directory(data.data_dir)
    if data.synthetic is None:
        return None
    ensure_benchmark(data.synthetic, data.data_dir, workers=min(os.cpu_count() or 1, 4))
    return int(json.loads((data.data_dir / "benchmark.json").read_text())["pool_rows"])


@task(name="export-fp16-ir", cache_policy=NONE)
def export_fp16_ir(detector: DetectorConfig, models_dir: Path) -> Path:
    from tasks.detection.export import ensure_fp16_ir

    return ensure_fp16_ir(detector, models_dir)


@task(name="load-eval-split", cache_policy=NONE)
def load_split(evaluation: EvaluationConfig, detector: DetectorConfig) -> EvalSplit:
    """The eval split, its categories checked against the detector's classes and `evaluation.label_map`."""
    from tasks.evaluation.split import load_eval_split

    return load_eval_split(evaluation.dataset_dir, num_classes=detector.num_classes, label_map=evaluation.label_map)


@task(name="activation-profiles", cache_policy=NONE)
def pool_profiles(pool: PoolConfig, fp_ir: Path) -> ActivationProfiles:
    """Per-candidate activation min/max over the pool, for the `coverage` and `widest_ranges` strategies."""
    from tasks.calibration.profiles import profile_pool
    from tasks.ingest import IngestReport, iter_candidate_batches

    return profile_pool(fp_ir, iter_candidate_batches(pool, RuntimeEnv(), IngestReport()))


@task(name="profile-shard", cache_policy=NONE)
def profile_shard(fp_ir: Path, candidates: list) -> ActivationProfiles:
    """Activation profiles of one shard of the pool (candidates in pool order), on any process
    that can read `fp_ir`."""
    from tasks.calibration.profiles import profile_pool

    return profile_pool(fp_ir, [candidates])


@task(name="select-calibration-set", cache_policy=NONE)
def select(scores: pa.Table, selection: SelectionConfig, profiles: ActivationProfiles | None) -> SelectionOutcome:
    from tasks.selection import SelectionInput, describe_selection, select_calibration_set

    chosen = select_calibration_set(SelectionInput.from_table(scores), selection, profiles)
    return describe_selection(chosen, scores)


@task(name="collect-calibration-images", cache_policy=NONE)
def collect_calibration_images(pool: PoolConfig, ids: Sequence[str]) -> list[bytes]:
    from tasks.ingest import collect_images

    return collect_images(pool, RuntimeEnv(), ids)


@task(name="quantize-int8", cache_policy=NONE)
def quantize(
    fp_ir: Path, images: list[bytes], quantization: QuantizationConfig, out_dir: Path, split: EvalSplit
) -> QuantizeResult:
    from tasks.calibration.quantize import quantize as quantize_stage

    return quantize_stage(fp_ir, images, quantization, out_dir, validation=split)


@task(name="evaluate-ir", cache_policy=NONE)
def evaluate(ir_path: Path, split: EvalSplit, evaluation: EvaluationConfig) -> EvalResult:
    """mAP only: speed is measured for both IRs together (`measure_speeds`)."""
    from tasks.evaluation.evaluate import evaluate_ir

    return evaluate_ir(ir_path, split, evaluation, measure_speed=False)


@task(name="evaluate-fp16-ir", cache_policy=NONE)
def evaluate_fp16(ir_path: Path, split: EvalSplit, evaluation: EvaluationConfig) -> EvalResult:
    """FP16 mAP, remembered beside the IR: every run and ablation cell reuses it."""
    from tasks.evaluation.evaluate import evaluate_ir_cached

    return evaluate_ir_cached(ir_path, split, evaluation)


@task(name="measure-speed", cache_policy=NONE)
def measure_speeds(ir_paths: list[Path], split: EvalSplit, evaluation: EvaluationConfig) -> dict[Path, Speed]:
    from tasks.evaluation.evaluate import measure_speeds as measure

    return measure(ir_paths, split, evaluation)


@task(name="activation-clipping", cache_policy=NONE)
def clipping(int8_ir: Path, fp_ir: Path, split: EvalSplit, evaluation: EvaluationConfig) -> ClippingReport:
    from tasks.calibration.clipping import activation_clipping
    from tasks.detection.runtime import preprocessing_of

    inputs = preprocessing_of(fp_ir).inputs(split.head(evaluation.clipping_images).images)
    return activation_clipping(int8_ir, fp_ir, inputs, evaluation.clipping_flag_fraction)


@task(name="decompose-gap", cache_policy=NONE)
def decompose(
    int8_ir: Path,
    fp_ir: Path,
    split: EvalSplit,
    evaluation: EvaluationConfig,
    fp16: EvalResult,
    int8: EvalResult,
    report: ClippingReport,
    work_dir: Path,
) -> GapDecomposition:
    from tasks.calibration.decomposition import decompose_gap

    return decompose_gap(int8_ir, fp_ir, split, evaluation, fp16, int8, report, work_dir)


@dataclass(frozen=True)
class CalibrationOutcome:
    """One calibration set turned into an INT8 IR and compared with FP16; `decomposition` is
    None when `evaluation.gap_decomposition` is off."""

    quantized: QuantizeResult
    comparison: Comparison
    clipping: ClippingReport
    decomposition: GapDecomposition | None = None

    def metrics(self) -> dict[str, float | None]:
        values = self.comparison.metrics() | self.quantized.metrics() | self.clipping.metrics()
        return values | (self.decomposition.metrics() if self.decomposition else {})


def calibrate_and_compare(
    pool: PoolConfig,
    quantization: QuantizationConfig,
    evaluation: EvaluationConfig,
    fp_ir: Path,
    fp16: EvalResult,
    split: EvalSplit,
    ids: Sequence[str],
    out_dir: Path,
) -> CalibrationOutcome:
    """Quantize on exactly `ids` (in order), evaluate INT8 against FP16, measure clipping and,
    with `evaluation.gap_decomposition`, split the gap into its weight and activation parts.

    Both IRs' speeds are measured here, together, so their ratio compares like with like.
    """
    from tasks.evaluation.comparison import Comparison
    from tasks.evaluation.evaluate import with_speed

    images = collect_calibration_images(pool, ids)
    quantized = quantize(fp_ir, images, quantization, out_dir, split)
    int8_ir = quantized.int8_ir_path
    int8 = evaluate(int8_ir, split, evaluation)
    speeds = measure_speeds([fp_ir, int8_ir], split, evaluation)
    report = clipping(int8_ir, fp_ir, split, evaluation)
    parts = None
    if evaluation.gap_decomposition:
        parts = decompose(int8_ir, fp_ir, split, evaluation, fp16, int8, report, out_dir)
    comparison = Comparison(
        with_speed(fp16, speeds[fp_ir]),
        with_speed(int8, speeds[int8_ir]),
        weights_only=parts.weights_only if parts else None,
    )
    return CalibrationOutcome(quantized, comparison, report, parts)


def compare_with_baseline(
    pool: PoolConfig,
    selection: SelectionConfig,
    quantization: QuantizationConfig,
    evaluation: EvaluationConfig,
    scores: pa.Table,
    fp_ir: Path,
    fp16: EvalResult,
    chosen: EvalResult,
    split: EvalSplit,
    out_dir: Path,
) -> BaselineComparison:
    """The `evaluation.baseline` strategy's pick at the same K, quantized as `quantization` says
    and evaluated on `split` (one more PTQ and evaluation: no speed, clipping or gap split), beside
    the chosen set's INT8 result `chosen`. Its selection.parquet and IR go to `out_dir`."""
    import pyarrow.parquet as pq

    from tasks.evaluation.comparison import BaselineComparison

    section = section_with(selection, "evaluation.baseline", strategy=evaluation.baseline)
    picked = select(scores, section, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(picked.table, out_dir / "selection.parquet")
    images = collect_calibration_images(pool, picked.selection.ids)
    quantized = quantize(fp_ir, images, quantization, out_dir, split)
    result = evaluate(quantized.int8_ir_path, split, evaluation)
    return BaselineComparison.of(
        evaluation.baseline, section.k, fp16, chosen, result, evaluation.bootstrap_resamples, evaluation.bootstrap_seed
    )
