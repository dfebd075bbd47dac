"""Activation probes: the FP model run with chosen internal tensors exposed as extra outputs.

Activation profiles (`profiles`) and clipping (`clipping`) both read the FP model's
activations where NNCF quantizes them. Tensors are named after the op that produces them
(NNCF keeps the FP op names in the INT8 IR), `op` for output 0 and `op:i` otherwise, so a
profile and a clipping report name the same tensor the same way. The CPU runs in f32
explicitly, as `tasks.detection.runtime` does, so an FP16 IR is probed as it is evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def read_model(model):
    """An `openvino.Model` from an IR path, or a copy of a given model (probes add outputs to it)."""
    import openvino as ov

    return ov.Core().read_model(str(model)) if isinstance(model, str | Path) else model.clone()


def tensor_name(output) -> str:
    """The name of an op output: its producer's friendly name, with `:index` past output 0."""
    producer, index = output.get_node().get_friendly_name(), output.get_index()
    return producer if index == 0 else f"{producer}:{index}"


class ActivationProbe:
    """`model` compiled for the CPU (f32) with `outputs` (op outputs of that model) exposed by name."""

    def __init__(self, model, outputs: Sequence) -> None:
        import openvino as ov

        self.names = tuple(tensor_name(output) for output in outputs)
        extra = model.add_outputs(list(outputs))
        self._compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._outputs = self._compiled.outputs[len(self._compiled.outputs) - len(extra) :]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One inference on a preprocessed float32 [N, C, H, W] batch → each probed tensor by name."""
        result = self._compiled(batch)
        return {name: result[output] for name, output in zip(self.names, self._outputs, strict=True)}
