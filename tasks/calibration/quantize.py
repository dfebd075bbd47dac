"""INT8 post-training quantization of the detector's FP16 IR with NNCF, on exactly the given images.

NNCF takes the first `subset_size` items of the dataset in order and never shuffles, so
the calibration set is passed whole with `subset_size=len(images)`: the selection the
pipeline made is the selection NNCF sees, no more and no fewer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.config import BiasCorrection, QuantizationConfig, RangeEstimator
from tasks.detection.adapter import Adapter
from tasks.detection.export import ir_path
from tasks.detection.preprocess import Preprocessing
from tasks.errors import TailcalError

if TYPE_CHECKING:
    from tasks.evaluation.split import EvalSplit

logger = logging.getLogger(__name__)


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
    bias_correction: str = "fast"

    def metrics(self) -> dict[str, float]:
        """`ptq.wall_s`: seconds spent in NNCF, for MLflow."""
        return {"ptq.wall_s": self.wall_s}


def _nncf_preset(preset: str):
    import nncf

    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise QuantizationError(f"preset {preset!r} is not known: use 'performance' or 'mixed'")
    return presets[preset]


def _advanced(range_estimator: RangeEstimator, bias_correction: BiasCorrection):
    """NNCF's AdvancedQuantizationParameters for the estimator and bias correction; raises
    QuantizationError naming an unknown value of either and the allowed ones."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    allowed = ("MEAN_MINMAX", "MINMAX", "MEAN_QUANTILE", "HISTOGRAM")
    if range_estimator not in allowed:
        raise QuantizationError(f"range_estimator {range_estimator!r} is not known: use one of {', '.join(allowed)}")
    if bias_correction not in ("fast", "none"):
        raise QuantizationError(f"bias_correction {bias_correction!r} is not known: use 'fast' or 'none'")
    return AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, range_estimator),
        disable_bias_correction=bias_correction == "none",
    )


def calibration_inputs(images: Sequence[np.ndarray | bytes], preprocessing: Preprocessing) -> list[np.ndarray]:
    """Each image (uint8 RGB array or encoded bytes, any size) as the [1, 3, S, S] input the IR takes."""
    if not images:
        raise QuantizationError("no calibration images: select at least one (selection.k ≥ 1)")
    return preprocessing.inputs(images)


def quantize(
    fp_ir_path: Path,
    images: Sequence[np.ndarray | bytes],
    config: QuantizationConfig,
    out_dir: Path,
    validation: EvalSplit | None = None,
) -> QuantizeResult:
    """PTQ as `config` says: plain `nncf.quantize`, or with accuracy control on `validation`.

    Writes `<out_dir>/detector_int8.xml` (or `detector_int8_ac.xml` with accuracy control).
    Raises QuantizationError when accuracy control is on and no validation split is given.
    """
    if not config.accuracy_control:
        return quantize_ir(fp_ir_path, images, config, out_dir)
    if validation is None:
        raise QuantizationError("quantization.accuracy_control needs the evaluation split to validate on")
    return quantize_ir_with_accuracy_control(fp_ir_path, images, validation, config, out_dir)


def quantize_ir(
    fp_ir_path: Path, images: Sequence[np.ndarray | bytes], config: QuantizationConfig, out_dir: Path
) -> QuantizeResult:
    """nncf.quantize on exactly `images`, in order, with `config.preset`, `config.range_estimator` and
    `config.bias_correction`."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp_ir_path))
    adapter = Adapter.of_model(model, fp_ir_path)
    inputs = calibration_inputs(images, adapter.preprocessing)
    started = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset(inputs),
        preset=_nncf_preset(config.preset or adapter.decoder.preset),
        subset_size=len(inputs),
        ignored_scope=_ignored(adapter, model),
        advanced_parameters=_advanced(config.range_estimator, config.bias_correction),
    )
    xml_path = _save(quantized, ir_path(out_dir, "int8"))
    wall = time.perf_counter() - started
    preset = config.preset or adapter.decoder.preset
    logger.info(
        "quantized %s on %d images (%s, %s, bias correction %s) in %.1f s",
        fp_ir_path.name,
        len(inputs),
        preset,
        config.range_estimator,
        config.bias_correction,
        wall,
    )
    return QuantizeResult(
        xml_path, len(inputs), wall, preset, config.range_estimator, bias_correction=config.bias_correction
    )


def quantize_ir_with_accuracy_control(
    fp_ir_path: Path,
    images: Sequence[np.ndarray | bytes],
    validation: EvalSplit,
    config: QuantizationConfig,
    out_dir: Path,
) -> QuantizeResult:
    """The mixed tier: NNCF reverts the most sensitive layers to FP until mAP@[.5:.95] on
    `validation` drops by at most `config.max_drop`.

    NNCF calls the validation function on subsets and on single items while ranking layers;
    `tasks.evaluation.evaluate.map_validation_fn` scores whatever items it gets.
    """
    import nncf
    import openvino as ov

    from tasks.evaluation.evaluate import map_validation_fn

    model = ov.Core().read_model(str(fp_ir_path))
    adapter = Adapter.of_model(model, fp_ir_path)
    preprocessing = adapter.preprocessing
    inputs = calibration_inputs(images, preprocessing)
    validation_fn = map_validation_fn(validation, adapter)
    items = list(zip(validation.image_ids, validation.images, strict=True))
    started = time.perf_counter()

    def _validate(compiled_model, batch) -> tuple[float, None]:
        # (metric, None) puts NNCF in metric mode: it ranks layers by the metric itself.
        return float(validation_fn(compiled_model, list(batch))), None

    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(inputs),
        nncf.Dataset(items, lambda item: preprocessing.batch([item[1]])[0]),
        validation_fn=_validate,
        max_drop=config.max_drop,
        preset=_nncf_preset(config.preset or adapter.decoder.preset),
        subset_size=len(inputs),
        ignored_scope=_ignored(adapter, model),
        advanced_quantization_parameters=_advanced(config.range_estimator, config.bias_correction),
    )
    xml_path = _save(quantized, ir_path(out_dir, "mixed"))
    wall = time.perf_counter() - started
    logger.info("accuracy-controlled PTQ of %s (max_drop %.3f) in %.1f s", fp_ir_path.name, config.max_drop, wall)
    preset = config.preset or adapter.decoder.preset
    return QuantizeResult(
        xml_path,
        len(inputs),
        wall,
        preset,
        config.range_estimator,
        accuracy_control=True,
        bias_correction=config.bias_correction,
    )


def _ignored(adapter: Adapter, model):
    """The layout's float subgraph (`Decoder.ignored_scope`) as an NNCF IgnoredScope, or None."""
    import nncf

    names = adapter.decoder.ignored_scope(model)
    return nncf.IgnoredScope(names=names, validate=False) if names else None


def _save(model, xml_path: Path) -> Path:
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, xml_path, compress_to_fp16=True)
    return xml_path
