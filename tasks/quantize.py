"""INT8 post-training quantization of the detector's FP16 IR with NNCF, on exactly the given images.

NNCF takes the first `subset_size` items of the dataset in order and never shuffles, so
the calibration set is passed whole with `subset_size=len(images)`: the selection the
pipeline made is the selection NNCF sees, no more and no fewer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.config import RangeEstimator
from tasks.detection.postprocess import decode_image, preprocess
from tasks.errors import TailcalError

logger = logging.getLogger(__name__)

Preset = Literal["performance", "mixed"]


class QuantizationError(TailcalError):
    """PTQ cannot run as asked (no images, mismatched sizes, unknown knob)."""


@dataclass(frozen=True)
class QuantizeResult:
    """The INT8 IR and how it was made."""

    int8_ir_path: Path
    subset_size: int
    wall_s: float
    preset: str
    range_estimator: str
    accuracy_control: bool = False


def _nncf_preset(preset: Preset):
    import nncf

    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise QuantizationError(f"preset {preset!r} is not known: use 'performance' or 'mixed'")
    return presets[preset]


def _advanced(range_estimator: RangeEstimator):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    allowed = ("MEAN_MINMAX", "MINMAX", "MEAN_QUANTILE", "HISTOGRAM")
    if range_estimator not in allowed:
        raise QuantizationError(f"range_estimator {range_estimator!r} is not known: use one of {', '.join(allowed)}")
    return AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, range_estimator)
    )


def calibration_inputs(images: Sequence[np.ndarray | bytes]) -> list[np.ndarray]:
    """Each image (uint8 RGB array or encoded bytes) as the normalized [1,3,H,W] tensor the IR takes."""
    if not images:
        raise QuantizationError("no calibration images: select at least one (selection.k ≥ 1)")
    return [preprocess([decode_image(image)]) for image in images]


def quantize_ir(
    fp_ir_path: Path,
    images: Sequence[np.ndarray | bytes],
    preset: Preset = "performance",
    range_estimator: RangeEstimator = "MEAN_MINMAX",
    out_dir: Path | None = None,
    name: str = "detector_int8",
) -> QuantizeResult:
    """nncf.quantize on exactly `images`, in order; writes `<out_dir>/<name>.xml`."""
    import nncf
    import openvino as ov

    inputs = calibration_inputs(images)
    started = time.perf_counter()
    model = ov.Core().read_model(str(fp_ir_path))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(inputs),
        preset=_nncf_preset(preset),
        subset_size=len(inputs),
        advanced_parameters=_advanced(range_estimator),
    )
    xml_path = _save(quantized, out_dir or fp_ir_path.parent, name)
    wall = time.perf_counter() - started
    logger.info(
        "quantized %s on %d images (%s, %s) in %.1f s", fp_ir_path.name, len(inputs), preset, range_estimator, wall
    )
    return QuantizeResult(xml_path, len(inputs), wall, preset, range_estimator)


def quantize_ir_with_accuracy_control(
    fp_ir_path: Path,
    images: Sequence[np.ndarray | bytes],
    validation_items: Sequence[tuple[int, np.ndarray]],
    validation_fn: Callable[[object, list[tuple[int, np.ndarray]]], float],
    max_drop: float = 0.01,
    preset: Preset = "performance",
    range_estimator: RangeEstimator = "MEAN_MINMAX",
    out_dir: Path | None = None,
    name: str = "detector_int8_ac",
) -> QuantizeResult:
    """The mixed tier: NNCF reverts the most sensitive layers to FP until the metric drops ≤ `max_drop`.

    `validation_items` are (COCO image id, uint8 image) pairs and
    `validation_fn(compiled_model, items) -> metric` (e.g. `tasks.evaluate.map_validation_fn`).
    NNCF calls it on subsets and on single items while ranking layers, so it must score
    whatever items it gets, not assume the whole set.
    """
    import nncf
    import openvino as ov

    inputs = calibration_inputs(images)
    started = time.perf_counter()
    model = ov.Core().read_model(str(fp_ir_path))

    def _validate(compiled_model, items) -> tuple[float, None]:
        # (metric, None) puts NNCF in metric mode: it ranks layers by the metric itself.
        return float(validation_fn(compiled_model, list(items))), None

    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(inputs),
        nncf.Dataset(list(validation_items), lambda item: preprocess([item[1]])),
        validation_fn=_validate,
        max_drop=max_drop,
        preset=_nncf_preset(preset),
        subset_size=len(inputs),
        advanced_quantization_parameters=_advanced(range_estimator),
    )
    xml_path = _save(quantized, out_dir or fp_ir_path.parent, name)
    wall = time.perf_counter() - started
    logger.info("accuracy-controlled PTQ of %s (max_drop %.3f) in %.1f s", fp_ir_path.name, max_drop, wall)
    return QuantizeResult(xml_path, len(inputs), wall, preset, range_estimator, accuracy_control=True)


def _save(model, out_dir: Path, name: str) -> Path:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml_path = out_dir / f"{name}.xml"
    ov.save_model(model, xml_path, compress_to_fp16=True)
    return xml_path
