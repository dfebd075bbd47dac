"""The detector as OpenVINO IR, and the file names every IR of a run goes by.

The IR holds backbone + head (`RawHeadModel`) with FP16-compressed weights; the INT8 and
accuracy-controlled IRs are made from it by `tasks.calibration.quantize`, and the
inference service finds all three by these names.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.config import DetectorConfig
from tasks.detection.preprocess import Preprocessing

logger = logging.getLogger(__name__)

Tier = Literal["int8", "mixed", "fp16"]
# IR stem per precision tier, as the release cycle writes them (each with a .bin beside it).
IR_STEMS: dict[Tier, str] = {"int8": "detector_int8", "mixed": "detector_int8_ac", "fp16": "detector_fp16"}


def ir_path(directory: Path, tier: Tier) -> Path:
    """`<directory>/<stem>.xml` of a tier's IR."""
    return directory / f"{IR_STEMS[tier]}.xml"


@dataclass(frozen=True)
class ExportResult:
    """Where the FP16-compressed IR went and how long conversion took."""

    xml_path: Path
    input_size: int
    wall_s: float


def export_ir(model, out_dir: Path, preprocessing: Preprocessing) -> ExportResult:
    """Convert backbone + head of a torchvision FCOS to `<out_dir>/detector_fp16.xml`.

    The IR's input is [N, 3, S, S] with S = `preprocessing.input_size`, and it records the
    preprocessing contract in its runtime info. Weights are FP16-compressed; this CPU has no
    native fp16, so the IR runs in f32 (`tasks.detection.runtime` sets the precision hint).
    """
    input_size = preprocessing.input_size
    import openvino as ov
    import torch

    from tasks.detection.model import OUTPUT_NAMES, RawHeadModel

    started = time.perf_counter()
    wrapper = RawHeadModel(model).eval()
    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        ov_model = ov.convert_model(wrapper, example_input=example, input=[(-1, 3, input_size, input_size)])
    for output, output_name in zip(ov_model.outputs, OUTPUT_NAMES, strict=True):
        output.get_tensor().set_names({output_name})
    preprocessing.write_to(ov_model)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml_path = ir_path(out_dir, "fp16")
    ov.save_model(ov_model, xml_path, compress_to_fp16=True)
    wall = time.perf_counter() - started
    logger.info("exported %s in %.1f s", xml_path, wall)
    return ExportResult(xml_path=xml_path, input_size=input_size, wall_s=wall)


def ensure_fp16_ir(config: DetectorConfig, models_dir: Path) -> Path:
    """The FP16 IR of `config`'s checkpoint, exported once into `<models_dir>/<key>/`.

    The key is the checkpoint's sha256 and the detector settings the IR bakes in
    (architecture, classes, input size, resize): every run and ablation cell on the same detector
    reuses it, and changing any of those exports anew. Raises DetectorError when the
    checkpoint is missing or does not fit the architecture.
    """
    from tasks.detection.model import build_detector

    model = build_detector(config)  # raises a clear error when the checkpoint is missing
    digest = hashlib.sha256()
    with Path(config.checkpoint).open("rb") as handle:
        digest.update(hashlib.file_digest(handle, "sha256").digest())
    digest.update(f"{config.architecture}:{config.num_classes}:{config.input_size}:{config.resize}".encode())
    out_dir = models_dir / digest.hexdigest()[:12]
    xml_path = ir_path(out_dir, "fp16")
    if not xml_path.exists():
        export_ir(model, out_dir, Preprocessing(config.input_size, config.resize))
    return xml_path
