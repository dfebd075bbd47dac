"""Activation clipping per quantized layer: how much of the FP activation mass falls outside INT8 ranges.

For each activation `FakeQuantize` in the INT8 IR, input_low / input_high (its inputs 1
and 2) are the range NNCF calibrated. The FP model's tensor feeding the same place is
found by its producer's name (NNCF keeps the FP op names), probed (`probes`) on
evaluation images; clipped % = share of elements below low or above high.
A calibration set that missed the hard tail shows up here as layers clipping > 1 %.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.calibration.probes import ActivationProbe, read_model, tensor_name

logger = logging.getLogger(__name__)

FLAG_FRACTION = 0.01


@dataclass(frozen=True)
class LayerClipping:
    """One activation quantizer: its range and the share of FP activations outside it."""

    name: str
    producer: str
    input_low: float
    input_high: float
    clipped_fraction: float
    flagged: bool


@dataclass(frozen=True)
class ClippingReport:
    """Clipping for every activation quantizer, worst first."""

    layers: tuple[LayerClipping, ...]
    images: int
    flag_fraction: float

    @property
    def flagged(self) -> tuple[LayerClipping, ...]:
        return tuple(layer for layer in self.layers if layer.flagged)

    def metrics(self) -> dict[str, float]:
        """`clipping.max_pct` (worst layer, %) and `clipping.flagged_layers`, for MLflow."""
        return {
            "clipping.max_pct": 100 * max((layer.clipped_fraction for layer in self.layers), default=0.0),
            "clipping.flagged_layers": len(self.flagged),
        }


def _is_constant_path(node) -> bool:
    # Weight quantizers sit on Constant (or Constant → Convert, when weights were FP16-compressed).
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def activation_quantizers(int8_model) -> list[tuple[object, str]]:
    """(FakeQuantize op, name of the tensor it quantizes) for every activation quantizer."""
    found = []
    for op in int8_model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input_value(0)
        if not _is_constant_path(source.get_node()):
            found.append((op, tensor_name(source)))
    return found


def activation_clipping(
    int8_model,
    fp_model,
    inputs: Sequence[np.ndarray],
    flag_fraction: float = FLAG_FRACTION,
) -> ClippingReport:
    """Clipping of FP activations (from `fp_model` on `inputs`) against `int8_model`'s FakeQuantize ranges.

    Models are `openvino.Model`s (not modified) or IR paths; `inputs` are ready model inputs
    ([1|N, C, H, W] float32).
    """
    int8_model = read_model(int8_model)
    fp_model = read_model(fp_model)
    fp_outputs = {tensor_name(output): output for op in fp_model.get_ordered_ops() for output in op.outputs()}
    quantizers = []
    for fq, tensor in activation_quantizers(int8_model):
        if tensor not in fp_outputs:
            logger.warning("quantizer %s: no FP tensor named %s, skipped", fq.get_friendly_name(), tensor)
            continue
        low = np.asarray(fq.input_value(1).get_node().get_data(), np.float32)
        high = np.asarray(fq.input_value(2).get_node().get_data(), np.float32)
        quantizers.append((fq.get_friendly_name(), tensor, low, high))
    # One tensor may feed several quantizers: it is probed once.
    probe = ActivationProbe(fp_model, [fp_outputs[name] for name in sorted({q[1] for q in quantizers})])
    clipped = np.zeros(len(quantizers), np.int64)
    total = np.zeros(len(quantizers), np.int64)
    for batch in inputs:
        activations = probe(batch)
        for i, (_, tensor, low, high) in enumerate(quantizers):
            values = activations[tensor]
            clipped[i] += int(np.count_nonzero((values < low) | (values > high)))
            total[i] += values.size
    layers = []
    for (name, producer, low, high), n_clipped, n_total in zip(quantizers, clipped, total, strict=True):
        fraction = float(n_clipped / max(n_total, 1))
        layers.append(
            LayerClipping(name, producer, float(low.min()), float(high.max()), fraction, fraction > flag_fraction)
        )
    layers.sort(key=lambda layer: layer.clipped_fraction, reverse=True)
    report = ClippingReport(tuple(layers), images=sum(len(b) for b in inputs), flag_fraction=flag_fraction)
    logger.info("clipping: %d quantizers, %d above %.0f %%", len(layers), len(report.flagged), flag_fraction * 100)
    return report
