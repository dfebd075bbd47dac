"""The detector as OpenVINO IR, and the file names every IR of a run goes by.

`ensure_fp16_ir` turns whatever `detector` config names — a torchvision family and its
checkpoint, or an exported ONNX/IR model with a declared output layout — into one
FP16-compressed IR that records its `Adapter` (preprocessing + decoder). The INT8 and
accuracy-controlled IRs are made from it by `tasks.calibration.quantize`, and the inference
service finds all three by these names.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.config import DetectorConfig
from tasks.detection.adapter import Adapter

logger = logging.getLogger(__name__)

Tier = Literal["int8", "mixed", "fp16"]
# IR stem per precision tier, as the release cycle writes them (each with a .bin beside it).
IR_STEMS: dict[Tier, str] = {"int8": "detector_int8", "mixed": "detector_int8_ac", "fp16": "detector_fp16"}
# Part of every export key: a change to what an IR records makes every cached IR stale.
EXPORT_FORMAT = "adapter-2"  # 2: exported layouts record the input side, boxes_scores_labels its output order


def ir_path(directory: Path, tier: Tier) -> Path:
    """`<directory>/<stem>.xml` of a tier's IR."""
    return directory / f"{IR_STEMS[tier]}.xml"


@dataclass(frozen=True)
class ExportResult:
    """Where the FP16-compressed IR went and how long conversion took."""

    xml_path: Path
    input_size: int
    wall_s: float


def export_ir(model, out_dir: Path, adapter: Adapter) -> ExportResult:
    """Convert the traceable part of a torchvision detector (`families.traceable`) to
    `<out_dir>/detector_fp16.xml`.

    The IR's input is [N, 3, S, S] with S = `adapter.preprocessing.input_size`, and it records
    the adapter in its runtime info. Weights are FP16-compressed; this CPU has no native fp16,
    so the IR runs in f32 (`tasks.detection.runtime` sets the precision hint).
    """
    import openvino as ov
    import torch

    from tasks.detection.families import traceable

    input_size = adapter.preprocessing.input_size
    started = time.perf_counter()
    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        ov_model = ov.convert_model(traceable(model), example_input=example, input=[(-1, 3, input_size, input_size)])
    adapter.write_to(ov_model)
    xml_path = _save(ov_model, out_dir)
    wall = time.perf_counter() - started
    logger.info("exported %s in %.1f s", xml_path, wall)
    return ExportResult(xml_path=xml_path, input_size=input_size, wall_s=wall)


def _save(ov_model, out_dir: Path) -> Path:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml_path = ir_path(out_dir, "fp16")
    ov.save_model(ov_model, xml_path, compress_to_fp16=True)
    return xml_path


def export_key(config: DetectorConfig) -> str:
    """sha256 (12 hex) of the model file(s) and every detector setting the IR bakes in."""
    digest = hashlib.sha256(EXPORT_FORMAT.encode())
    files = [Path(config.model)] if config.model else [Path(config.checkpoint)]
    if config.model and Path(config.model).suffix == ".xml":
        files.append(Path(config.model).with_suffix(".bin"))
    for path in files:
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    settings = (config.architecture, config.output_format, config.num_classes, config.input_size, config.resize)
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:12]


def ensure_fp16_ir(config: DetectorConfig, models_dir: Path) -> Path:
    """The FP16 IR of the detector `config` names, exported once into `<models_dir>/<export_key>/`.

    Every run and ablation cell on the same detector reuses it; changing the model file or
    any setting the IR bakes in exports anew. Raises DetectorError when the checkpoint or
    model is missing, does not fit the architecture, or its outputs do not fit the declared
    `detector.output_format`.
    """
    if config.model:
        from tasks.detection.exported import import_exported

        source = Path(config.model)
        if not source.exists():
            from tasks.detection.adapter import DetectorError

            raise DetectorError(f"detector.model {source} does not exist: point it at your .onnx or .xml file")
        out_dir = models_dir / export_key(config)
        xml_path = ir_path(out_dir, "fp16")
        if not xml_path.exists():
            _save(import_exported(config), out_dir)
        return xml_path

    from tasks.detection.families import adapter_for, build_detector, input_size_of

    model = build_detector(config)  # raises a clear error when the checkpoint is missing or does not fit
    out_dir = models_dir / export_key(config)
    xml_path = ir_path(out_dir, "fp16")
    if not xml_path.exists():
        size = input_size_of(config)
        export_ir(model, out_dir, adapter_for(model, config, size))
    return xml_path
