"""What calibration can fix: the INT8 gap split into its weight part and its activation part.

    gap = FP16 − INT8 = (FP16 − weights-only) + (weights-only − INT8)
                         weight part             activation part

The weights-only model is the INT8 IR with its activation quantizers removed: weights stay
as NNCF rounded them, activations run in float. No second quantization is needed. NNCF 3.4's
OpenVINO backend (`nncf/openvino/quantization/quantize_model.py`) ends PTQ with OpenVINO's
`compress_quantize_weights_transformation`, which folds every FakeQuantize on a weight
constant into an int8 Constant → Convert → (Subtract) → Multiply chain; so in the IRs tailcal
writes every FakeQuantize quantizes an activation, and the weights are int8 constants that
stay untouched. A FakeQuantize whose input is a constant (an IR quantized without that
transformation) is a weight quantizer and is kept as well.

Only the activation part depends on which images were in the calibration set (they set
the activation ranges). The weight part does not, with one exception: fast bias
correction, which NNCF fits on the calibration set, shifts biases and stays in the
weights-only model.

Per activation quantizer, the affordable measure is the part it causes alone:
weights-only mAP − mAP of weights-only plus that one quantizer. One evaluation each, so only
the quantizers that clip most (`tasks.calibration.clipping`) are measured. The parts of
single quantizers need not add up to the activation part: errors compound through layers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from tasks.calibration.clipping import ClippingReport, activation_quantizers
from tasks.calibration.probes import read_model
from tasks.config import EvaluationConfig
from tasks.errors import TailcalError
from tasks.evaluation.bootstrap import Interval, PairedBootstrap
from tasks.evaluation.evaluate import EvalResult
from tasks.evaluation.split import EvalSplit

logger = logging.getLogger(__name__)


class DecompositionError(TailcalError):
    """The gap cannot be decomposed as asked (no activation quantizers, unknown quantizer names)."""


@dataclass(frozen=True)
class QuantizerPart:
    """One activation quantizer's share of the gap, measured alone.

    `clipped_fraction`: share of FP activations outside its range on eval images (0–1);
    `map_alone`: mAP@[.5:.95] of the weights-only model plus only this quantizer; `part`:
    weights-only mAP − map_alone, in mAP units (positive: the quantizer costs mAP).
    """

    name: str
    clipped_fraction: float
    map_alone: float
    part: float


@dataclass(frozen=True)
class GapDecomposition:
    """The weights-only evaluation, the paired 95 % intervals of both parts, and per-quantizer parts.

    `weight_part` / `activation_part` are Intervals (estimate and bootstrap bounds over the
    eval images, mAP units), None when the results carry no per-image matches. Per-condition
    parts come from `Comparison` given `weights_only`.
    """

    weights_only: EvalResult
    weight_part: Interval | None
    activation_part: Interval | None
    quantizers: tuple[QuantizerPart, ...]
    activation_quantizers: int

    def metrics(self) -> dict[str, float]:
        """Interval bounds of both parts and each measured quantizer's part and clipping %, for MLflow."""
        values: dict[str, float] = {"decomposition.activation_quantizers": self.activation_quantizers}
        if self.weight_part is not None:
            values |= self.weight_part.metrics("gap_part.weights")
        if self.activation_part is not None:
            values |= self.activation_part.metrics("gap_part.activations")
        for quantizer in self.quantizers:
            values[f"quantizer.{quantizer.name}.gap_part_alone"] = quantizer.part
            values[f"quantizer.{quantizer.name}.clipped_pct"] = 100 * quantizer.clipped_fraction
        return values

    def describe(self, fp16_map: float, int8_map: float) -> str:
        """One line: both parts with their intervals, and the costliest quantizer measured alone."""
        weight = self.weight_part.describe() if self.weight_part else f"{fp16_map - self.weights_only.map:+.4f}"
        activation = (
            self.activation_part.describe() if self.activation_part else f"{self.weights_only.map - int8_map:+.4f}"
        )
        line = f"weights {weight}, activations {activation}"
        if self.weight_part is not None:
            line += f" ({100 * self.weight_part.confidence:.0f} % CI)"
        if self.quantizers:
            worst = max(self.quantizers, key=lambda q: q.part)
            line += f"; alone: {worst.name} {worst.part:+.4f}, clips {100 * worst.clipped_fraction:.2f} %"
        return line


def activation_quantizer_names(int8_model) -> list[str]:
    """Friendly names of the activation FakeQuantize ops of an INT8 model (an IR path or `openvino.Model`)."""
    return [fq.get_friendly_name() for fq, _ in activation_quantizers(read_model(int8_model))]


def weights_only_model(int8_model, keep: Collection[str] = ()):
    """A copy of `int8_model` (IR path or `openvino.Model`) without its activation quantizers,
    except those named in `keep`; weight quantization is left as it is.

    Raises DecompositionError naming any `keep` entry that is not an activation quantizer.
    """
    model = read_model(int8_model)
    quantizers = [fq for fq, _ in activation_quantizers(model)]
    names = {fq.get_friendly_name() for fq in quantizers}
    if unknown := sorted(set(keep) - names):
        raise DecompositionError(
            f"{unknown} are not activation quantizers of this model (it has {len(names)}): "
            "pass names from activation_quantizer_names or a clipping report of the same IR"
        )
    for fq in quantizers:
        if fq.get_friendly_name() not in keep:
            # Every consumer of the quantizer's output reads its input instead.
            fq.output(0).replace(fq.input_value(0))
    model.validate_nodes_and_infer_types()
    return model


def _save(model, xml_path: Path) -> Path:
    import openvino as ov

    # The model's constants are already as the INT8 IR stored them: saved as they are.
    ov.save_model(model, xml_path, compress_to_fp16=False)
    return xml_path


def _map_only(ir_path: Path, split: EvalSplit) -> float:
    """mAP@[.5:.95] alone: a quantizer measured alone needs no breakdown."""
    from tasks.detection.runtime import detect, load_detector
    from tasks.evaluation.coco import coco_map

    detector = load_detector(ir_path)
    detections = detect(detector.compiled, split.images, detector.preprocessing)
    return coco_map(split.coco, dict(zip(split.image_ids, detections, strict=True)), split.category_ids, False).map


def decompose_gap(
    int8_ir: Path,
    split: EvalSplit,
    evaluation: EvaluationConfig,
    fp16: EvalResult,
    int8: EvalResult,
    clipping: ClippingReport,
    work_dir: Path,
) -> GapDecomposition:
    """Evaluate the weights-only twin of `int8_ir` on `split`, bound both parts of the gap, and
    measure the `evaluation.attributed_quantizers` quantizers that clip most, each alone.

    `fp16` and `int8` are the two models' results on the same split; `clipping` is the INT8
    IR's clipping report (it ranks the quantizers). Temporary IRs go under `work_dir` and are
    removed. Raises DecompositionError when the IR has no activation quantizer.
    """
    from tasks.evaluation.evaluate import evaluate_ir

    names = activation_quantizer_names(int8_ir)
    if not names:
        raise DecompositionError(
            f"{int8_ir} has no activation quantizer: it is not an INT8 IR from quantize(); decompose that one"
        )
    ranked = [layer for layer in clipping.layers if layer.name in names][: evaluation.attributed_quantizers]
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="decomposition-", dir=work_dir) as scratch:
        weights_ir = _save(weights_only_model(int8_ir), Path(scratch) / "detector_weights_only.xml")
        weights_only = evaluate_ir(weights_ir, split, evaluation, measure_speed=False)
        parts = []
        for layer in ranked:
            alone_ir = _save(weights_only_model(int8_ir, keep={layer.name}), Path(scratch) / "detector_alone.xml")
            map_alone = _map_only(alone_ir, split)
            parts.append(QuantizerPart(layer.name, layer.clipped_fraction, map_alone, weights_only.map - map_alone))
    weight_part = activation_part = None
    if fp16.matches is not None and int8.matches is not None and weights_only.matches is not None:
        bootstrap = PairedBootstrap(fp16.matches, evaluation.bootstrap_resamples, evaluation.bootstrap_seed)
        weight_part = bootstrap.difference(fp16.matches, weights_only.matches)
        activation_part = bootstrap.difference(weights_only.matches, int8.matches)
    decomposition = GapDecomposition(weights_only, weight_part, activation_part, tuple(parts), len(names))
    logger.info(
        "gap %+.4f = weights %+.4f + activations %+.4f",
        fp16.map - int8.map,
        fp16.map - weights_only.map,
        weights_only.map - int8.map,
    )
    return decomposition
