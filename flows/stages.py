"""Prefect tasks shared by the release-cycle and ablation flows: thin wrappers over tasks/.

torch and OpenVINO are imported inside the tasks: `prefect deploy` imports every
entrypoint, and these imports take seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from tasks.config import RuntimeEnv, TailcalConfig


@dataclass(frozen=True)
class SelectionOutcome:
    selection_path: Path
    strategy: str
    k: int
    ids: tuple[str, ...]
    strata: dict[str, int]
    mean_difficulty_selected: float | None
    mean_difficulty_pool: float | None


@task(name="select-calibration-set")
def select_stage(config: TailcalConfig, scores_path: Path, run_dir: Path, profiles=None) -> SelectionOutcome:
    """Choose the K calibration images from the scored pool and write selection.parquet."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tasks.selection import SelectionInput, select_calibration_set

    scores = pq.read_table(scores_path)
    selection = select_calibration_set(
        SelectionInput.from_table(scores),
        config.selection.strategy,
        config.selection.k,
        config.selection.seed,
        config.selection.hard_fraction,
        profiles=profiles,
        tail_quantile=config.selection.coverage_tail_quantile,
    )
    table = selection.to_table()
    difficulty = dict(zip(scores.column("id").to_pylist(), scores.column("difficulty").to_pylist(), strict=True))
    table = table.append_column("difficulty", [[difficulty.get(i) for i in selection.ids]])
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "selection.parquet"
    pq.write_table(table, path)
    return SelectionOutcome(
        selection_path=path,
        strategy=selection.strategy,
        k=selection.k,
        ids=selection.ids,
        strata=selection.stratum_counts(),
        mean_difficulty_selected=pc.mean(table.column("difficulty")).as_py(),
        mean_difficulty_pool=pc.mean(scores.column("difficulty")).as_py(),
    )


def selection_metrics(outcome: SelectionOutcome) -> dict[str, float | None]:
    metrics = {
        "selection.k": outcome.k,
        "selection.mean_difficulty": outcome.mean_difficulty_selected,
        "pool.mean_difficulty": outcome.mean_difficulty_pool,
    }
    return metrics | {f"selection.count.{stratum}": n for stratum, n in outcome.strata.items()}


@task(name="export-fp16-ir", cache_policy=NONE)
def export_fp16_ir(config: TailcalConfig) -> Path:
    """The detector as an FP16-weight IR, exported once per checkpoint (keyed by its digest)."""
    from tasks.detector import build_detector, export_ir
    from tasks.synth.write import file_digest

    checkpoint = Path(config.detector.checkpoint)
    model = build_detector(config.detector)  # raises a clear error when the checkpoint is missing
    out_dir = config.data_dir / "models" / file_digest(checkpoint)[:12]
    xml_path = out_dir / "detector_fp16.xml"
    if not xml_path.exists():
        export_ir(model, out_dir, config.detector.input_size)
    return xml_path


@task(name="collect-calibration-images", cache_policy=NONE)
def collect_calibration_images(config: TailcalConfig, ids: Sequence[str]) -> list[bytes]:
    from tasks.ingest import collect_images

    return collect_images(config.pool_uri, config.pool, RuntimeEnv(), ids)


@task(name="quantize-int8", cache_policy=NONE)
def quantize_int8(config: TailcalConfig, fp_ir: Path, images: list[bytes], range_estimator: str, out_dir: Path):
    from tasks.evaluate import load_eval_split, map_validation_fn
    from tasks.quantize import quantize_ir, quantize_ir_with_accuracy_control

    q = config.quantization
    if not q.accuracy_control:
        return quantize_ir(fp_ir, images, q.preset, range_estimator, out_dir=out_dir)
    coco, eval_images = load_eval_split(config.eval_dir)
    items = [(meta["id"], image) for meta, image in zip(coco["images"], eval_images, strict=True)]
    return quantize_ir_with_accuracy_control(
        fp_ir, images, items, map_validation_fn(coco), q.max_drop, q.preset, range_estimator, out_dir
    )


@task(name="evaluate-ir", cache_policy=NONE)
def evaluate(config: TailcalConfig, ir_path: Path, measure_speed: bool = True):
    from tasks.evaluate import evaluate_ir

    iterations = config.evaluation.latency_iterations if measure_speed else 0
    return evaluate_ir(ir_path, config.eval_dir, latency_iterations=iterations)


@task(name="activation-clipping", cache_policy=NONE)
def clipping(config: TailcalConfig, int8_ir: Path, fp_ir: Path):
    from tasks.detection.clipping import activation_clipping
    from tasks.detection.postprocess import preprocess
    from tasks.evaluate import load_eval_split

    _, images = load_eval_split(config.eval_dir, limit=config.evaluation.clipping_images)
    inputs = [preprocess([image]) for image in images]
    return activation_clipping(int8_ir, fp_ir, inputs, config.evaluation.clipping_flag_fraction)


@task(name="activation-profiles", cache_policy=NONE)
def pool_profiles(config: TailcalConfig, fp_ir: Path):
    """Per-candidate activation min/max over the pool, for the `coverage` strategy."""
    from tasks.activations import ActivationProfiles, activation_profiles
    from tasks.detection.postprocess import decode_image, preprocess
    from tasks.ingest import IngestReport, iter_candidate_batches

    ids: list[str] = []

    def inputs():
        for batch in iter_candidate_batches(config.pool_uri, config.pool, RuntimeEnv(), IngestReport()):
            for candidate in batch:
                ids.append(candidate.id)
                yield preprocess([decode_image(candidate.image)])

    profiles = activation_profiles(fp_ir, inputs())
    # ids fill in while the generator is consumed, so they are attached afterwards.
    return ActivationProfiles(profiles.layer_names, profiles.values, tuple(ids))


@dataclass(frozen=True)
class CalibrationOutcome:
    """One calibration set turned into an INT8 IR and compared with FP16."""

    int8_ir: Path
    quantize_wall_s: float
    comparison: object  # tasks.comparison.Comparison (kept untyped here: no heavy import at module load)
    clipping: object  # tasks.detection.clipping.ClippingReport

    def metrics(self) -> dict[str, float | None]:
        layers = self.clipping.layers
        return self.comparison.metrics() | {
            "ptq.wall_s": self.quantize_wall_s,
            "clipping.max_pct": 100 * max((layer.clipped_fraction for layer in layers), default=0.0),
            "clipping.flagged_layers": len(self.clipping.flagged),
        }


def fp16_evaluation(config: TailcalConfig, fp_ir: Path):
    """FP16 mAP and speed, cached beside the IR: every run and ablation cell reuses it."""
    import json

    from tasks.evaluate import EvalResult

    cached = fp_ir.parent / f"eval-{config.eval_dir.name}-{_eval_key(config)}.json"
    if cached.exists():
        return EvalResult(**json.loads(cached.read_text()))
    result = evaluate(config, fp_ir)
    cached.write_text(json.dumps(result.as_dict()))
    return result


def _eval_key(config: TailcalConfig) -> str:
    import hashlib

    annotations = config.eval_dir / "annotations.json"
    return hashlib.sha256(annotations.read_bytes()).hexdigest()[:12]


def calibrate_and_compare(
    config: TailcalConfig, fp_ir: Path, ids: Sequence[str], range_estimator: str, out_dir: Path, fp16=None
) -> CalibrationOutcome:
    """Quantize on exactly `ids` (in order), evaluate INT8 against FP16, and measure clipping."""
    from tasks.comparison import Comparison

    images = collect_calibration_images(config, ids)
    quantized = quantize_int8(config, fp_ir, images, range_estimator, out_dir)
    int8 = evaluate(config, quantized.int8_ir_path)
    report = clipping(config, quantized.int8_ir_path, fp_ir)
    comparison = Comparison(fp16 or fp16_evaluation(config, fp_ir), int8)
    return CalibrationOutcome(quantized.int8_ir_path, quantized.wall_s, comparison, report)
