"""Activation clipping per quantized layer: how much of the FP activation mass falls outside INT8 ranges.

For each activation `FakeQuantize` in the INT8 IR, input_low / input_high (its inputs 1
and 2) are the range NNCF calibrated. The FP model's tensor feeding the same place is
found by its producer's name (NNCF keeps the FP op names), exposed as an extra output,
and run on evaluation images; clipped % = share of elements below low or above high.
A calibration set that missed the hard tail shows up here as layers clipping > 1 %.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _is_constant_path(node) -> bool:
    # Weight quantizers sit on Constant (or Constant → Convert, when weights were FP16-compressed).
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def _activation_quantizers(int8_model) -> list[tuple[object, str, int]]:
    found = []
    for op in int8_model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input_value(0)
        if _is_constant_path(source.get_node()):
            continue
        found.append((op, source.get_node().get_friendly_name(), source.get_index()))
    return found


def activation_clipping(
    int8_model,
    fp_model,
    inputs: Sequence[np.ndarray],
    flag_fraction: float = FLAG_FRACTION,
) -> ClippingReport:
    """Clipping of FP activations (from `fp_model` on `inputs`) against `int8_model`'s FakeQuantize ranges.

    Models are `openvino.Model`s or IR paths; `inputs` are ready model inputs ([1|N, C, H, W] float32).
    """
    import openvino as ov

    core = ov.Core()
    int8_model = core.read_model(str(int8_model)) if isinstance(int8_model, str | Path) else int8_model
    fp_model = core.read_model(str(fp_model)) if isinstance(fp_model, str | Path) else fp_model.clone()
    fp_ops = {op.get_friendly_name(): op for op in fp_model.get_ordered_ops()}
    quantizers = []
    for fq, producer, port in _activation_quantizers(int8_model):
        if producer not in fp_ops:
            logger.warning("quantizer %s: no FP op named %s, skipped", fq.get_friendly_name(), producer)
            continue
        low = np.asarray(fq.input_value(1).get_node().get_data(), np.float32)
        high = np.asarray(fq.input_value(2).get_node().get_data(), np.float32)
        quantizers.append((fq.get_friendly_name(), producer, port, low, high))
    # Deduplicate producer outputs: one tensor may feed several quantizers.
    wanted = sorted({(producer, port) for _, producer, port, _, _ in quantizers})
    extra = fp_model.add_outputs([fp_ops[producer].output(port) for producer, port in wanted])
    compiled = core.compile_model(fp_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    index = {key: compiled.outputs[len(compiled.outputs) - len(extra) + i] for i, key in enumerate(wanted)}
    clipped = np.zeros(len(quantizers), np.int64)
    total = np.zeros(len(quantizers), np.int64)
    for batch in inputs:
        result = compiled(batch)
        for i, (_, producer, port, low, high) in enumerate(quantizers):
            values = result[index[(producer, port)]]
            clipped[i] += int(np.count_nonzero((values < low) | (values > high)))
            total[i] += values.size
    layers = []
    for (name, producer, _, low, high), n_clipped, n_total in zip(quantizers, clipped, total, strict=True):
        fraction = float(n_clipped / max(n_total, 1))
        layers.append(
            LayerClipping(name, producer, float(low.min()), float(high.max()), fraction, fraction > flag_fraction)
        )
    layers.sort(key=lambda layer: layer.clipped_fraction, reverse=True)
    report = ClippingReport(tuple(layers), images=sum(len(b) for b in inputs), flag_fraction=flag_fraction)
    logger.info("clipping: %d quantizers, %d above %.0f %%", len(layers), len(report.flagged), flag_fraction * 100)
    return report
