"""What calibration can fix: the INT8 gap split into its weight part and its activation part,
and the weight part split again into weight rounding and NNCF's bias correction.

    gap = FP16 − INT8 = (FP16 − weights-only) + (weights-only − INT8)
                         weight part             activation part
        weight part   = (FP16 − rounded weights) + (rounded weights − weights-only)
                         rounding part             bias-correction part

The weights-only model is the INT8 IR with its activation quantizers removed: weights stay
as NNCF rounded them, activations run in float. No second quantization is needed. NNCF 3.4's
OpenVINO backend (`nncf/openvino/quantization/quantize_model.py`) ends PTQ with OpenVINO's
`compress_quantize_weights_transformation`, which folds every FakeQuantize on a weight
constant into an int8 Constant → Convert → (Subtract) → Multiply chain; so in the IRs tailcal
writes every FakeQuantize quantizes an activation, and the weights are int8 constants that
stay untouched. A FakeQuantize whose input is a constant (an IR quantized without that
transformation) is a weight quantizer and is kept as well.

The weights-only model also keeps the biases NNCF's (fast) bias correction shifted to make
up for quantization error, and that correction is fitted on the calibration set. The
rounded-weights model is the weights-only model with the FP model's biases put back (bias
Adds matched by name): it is what int8 weights alone cost, the one part no calibration set
changes. Calibration sets the activation ranges (activation part) and the bias correction
(bias-correction part). Measured on the demo (K=256, MEAN_MINMAX): rounded weights score
the FP16 mAP to 4 decimals, and the bias correction carries the whole weight part.
With `quantization.bias_correction: none` NNCF keeps the FP biases: the rounded-weights
model is the weights-only model, it is not evaluated twice, and the bias-correction part is
exactly 0 (`bias_shifts` finds no bias that moved).

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
    """The weights-only and rounded-weights evaluations, the parts with paired 95 % intervals,
    and per-quantizer parts.

    `weight_part` (FP16 − weights-only), `bias_correction_part` (rounded weights −
    weights-only) and `activation_part` (weights-only − INT8) are Intervals: the estimate
    and bootstrap bounds over the eval images, in mAP units; None when the results carry no
    per-image matches. `rounded_weights` is None when no bias could be matched to the FP
    model. Per-condition weight and activation parts come from `Comparison` given `weights_only`.
    """

    weights_only: EvalResult
    weight_part: Interval | None
    activation_part: Interval | None
    quantizers: tuple[QuantizerPart, ...]
    activation_quantizers: int
    rounded_weights: EvalResult | None = None
    bias_correction_part: Interval | None = None

    def metrics(self) -> dict[str, float]:
        """Interval bounds of the parts, the rounded-weights mAP and the bias-correction part, and
        each measured quantizer's part and clipping %, for MLflow."""
        values: dict[str, float] = {"decomposition.activation_quantizers": self.activation_quantizers}
        if self.weight_part is not None:
            values |= self.weight_part.metrics("gap_part.weights")
        if self.activation_part is not None:
            values |= self.activation_part.metrics("gap_part.activations")
        if self.rounded_weights is not None:
            values["rounded_weights.map"] = self.rounded_weights.map
            values["gap_part.bias_correction"] = self.rounded_weights.map - self.weights_only.map
        if self.bias_correction_part is not None:
            values |= self.bias_correction_part.metrics("gap_part.bias_correction")
        for quantizer in self.quantizers:
            values[f"quantizer.{quantizer.name}.gap_part_alone"] = quantizer.part
            values[f"quantizer.{quantizer.name}.clipped_pct"] = 100 * quantizer.clipped_fraction
        return values

    def describe(self, fp16_map: float, int8_map: float) -> str:
        """One line: the weight part (and its bias correction) and the activation part with their
        intervals, and the costliest quantizer measured alone."""
        weight = self.weight_part.describe() if self.weight_part else f"{fp16_map - self.weights_only.map:+.4f}"
        activation = (
            self.activation_part.describe() if self.activation_part else f"{self.weights_only.map - int8_map:+.4f}"
        )
        line = f"weights {weight}"
        if self.rounded_weights is not None:
            line += f" (bias correction {self.rounded_weights.map - self.weights_only.map:+.4f} of it)"
        line += f", activations {activation}"
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


_LINEAR = ("Convolution", "GroupConvolution", "MatMul")


def _constant(output):
    """The constant an op input reads, through Converts (FP16-compressed constants); None if not one."""
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def _bias_adds(model) -> dict[str, tuple[object, int]]:
    """{Add name: (Add op, index of its constant input)} for each Add of a constant to a linear op's output."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Add":
            continue
        for index in (0, 1):
            other = op.input_value(1 - index).get_node()
            if _constant(op.input_value(index)) is not None and other.get_type_name() in _LINEAR:
                found[op.get_friendly_name()] = (op, index)
    return found


def bias_shifts(model, fp_model) -> dict[str, float]:
    """{bias Add name: largest |bias − FP bias|} for each bias Add of `model` (IR path or
    `openvino.Model`) matched by name in `fp_model`; all 0 when NNCF's bias correction did not run."""
    import numpy as np

    fp_biases = _bias_adds(read_model(fp_model))
    shifts = {}
    for name, (op, index) in _bias_adds(read_model(model)).items():
        if name in fp_biases:
            fp_op, fp_index = fp_biases[name]
            mine = np.asarray(_constant(op.input_value(index)).get_data(), np.float32)
            theirs = np.asarray(_constant(fp_op.input_value(fp_index)).get_data(), np.float32)
            shifts[name] = float(np.abs(mine - theirs).max()) if mine.shape == theirs.shape else float("inf")
    return shifts


def restore_float_biases(model, fp_model) -> int:
    """Put the FP model's biases back into `model` (in place): each bias Add (a constant added to a
    Convolution / MatMul output) takes the constant of the FP model's Add of the same name,
    which NNCF keeps. Returns how many biases were restored.

    Raises DecompositionError when a matched bias has another shape in the FP model.
    """
    import numpy as np
    import openvino.opset13 as ops

    fp_biases = _bias_adds(read_model(fp_model))
    restored = 0
    for name, (op, index) in _bias_adds(model).items():
        if name not in fp_biases:
            continue
        fp_op, fp_index = fp_biases[name]
        value = np.asarray(_constant(fp_op.input_value(fp_index)).get_data(), np.float32)
        current = op.input_value(index)
        if tuple(value.shape) != tuple(current.get_shape()):
            raise DecompositionError(
                f"bias {name}: shape {tuple(current.get_shape())} in the INT8 model but {value.shape} in the FP model: "
                "pass the FP IR the INT8 IR was quantized from"
            )
        constant = ops.constant(value.astype(current.get_element_type().to_dtype()))
        op.input(index).replace_source_output(constant.output(0))
        restored += 1
    model.validate_nodes_and_infer_types()
    return restored


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
    detections = detect(detector, split.images)
    return coco_map(split.coco, dict(zip(split.image_ids, detections, strict=True)), split.category_ids, False).map


def decompose_gap(
    int8_ir: Path,
    fp_ir: Path,
    split: EvalSplit,
    evaluation: EvaluationConfig,
    fp16: EvalResult,
    int8: EvalResult,
    clipping: ClippingReport,
    work_dir: Path,
) -> GapDecomposition:
    """Evaluate the weights-only and rounded-weights twins of `int8_ir` (quantized from `fp_ir`)
    on `split`, bound each part of the gap, and measure the `evaluation.attributed_quantizers`
    quantizers that clip most, each alone.

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
        rounded = weights_only_model(int8_ir)
        rounded_weights = None
        shifts = bias_shifts(int8_ir, fp_ir)
        if shifts and not any(shifts.values()):
            # No bias moved (bias correction off): the rounded-weights model is the weights-only model.
            rounded_weights = weights_only
        elif restore_float_biases(rounded, fp_ir):
            rounded_ir = _save(rounded, Path(scratch) / "detector_rounded_weights.xml")
            rounded_weights = evaluate_ir(rounded_ir, split, evaluation, measure_speed=False)
        else:
            logger.warning("no bias of %s matched %s by name: the bias-correction part is not measured", int8_ir, fp_ir)
        parts = []
        for layer in ranked:
            alone_ir = _save(weights_only_model(int8_ir, keep={layer.name}), Path(scratch) / "detector_alone.xml")
            map_alone = _map_only(alone_ir, split)
            parts.append(QuantizerPart(layer.name, layer.clipped_fraction, map_alone, weights_only.map - map_alone))
    weight_part = activation_part = bias_part = None
    if fp16.matches is not None and int8.matches is not None and weights_only.matches is not None:
        bootstrap = PairedBootstrap(fp16.matches, evaluation.bootstrap_resamples, evaluation.bootstrap_seed)
        weight_part = bootstrap.difference(fp16.matches, weights_only.matches)
        activation_part = bootstrap.difference(weights_only.matches, int8.matches)
        if rounded_weights is not None and rounded_weights.matches is not None:
            bias_part = bootstrap.difference(rounded_weights.matches, weights_only.matches)
    decomposition = GapDecomposition(
        weights_only, weight_part, activation_part, tuple(parts), len(names), rounded_weights, bias_part
    )
    logger.info(
        "gap %+.4f = weights %+.4f (bias correction %s) + activations %+.4f",
        fp16.map - int8.map,
        fp16.map - weights_only.map,
        "n/a" if rounded_weights is None else f"{rounded_weights.map - weights_only.map:+.4f}",
        weights_only.map - int8.map,
    )
    return decomposition
