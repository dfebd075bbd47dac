"""The labelled evaluation split (COCO `annotations.json` + `images/`), loaded once per run.

FP16 and INT8 evaluation, activation clipping and accuracy-controlled PTQ all read the
same decoded images, so a run decodes them once and hands the split to each stage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.detection.preprocess import decode_image
from tasks.errors import TailcalError


class EvalSplitError(TailcalError):
    """The evaluation split cannot be read (missing annotations or image files)."""


@dataclass(frozen=True)
class EvalSplit:
    """A COCO dict and its decoded images (uint8 RGB [H, W, 3]) in `coco["images"]` order.

    `digest` identifies the annotations (sha256 of annotations.json, 12 hex digits), so a
    cached evaluation is reused only for the same split.
    """

    directory: Path
    coco: dict
    images: list[np.ndarray]
    digest: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_ids(self) -> list[int]:
        return [record["id"] for record in self.coco["images"]]

    def head(self, n: int) -> EvalSplit:
        """The first `n` images and their annotations (the same split when n ≥ its size)."""
        if n >= len(self):
            return self
        coco = dict(self.coco)
        coco["images"] = self.coco["images"][:n]
        kept = {record["id"] for record in coco["images"]}
        coco["annotations"] = [a for a in self.coco["annotations"] if a["image_id"] in kept]
        return EvalSplit(self.directory, coco, self.images[:n], self.digest)


def load_eval_split(directory: Path, limit: int | None = None) -> EvalSplit:
    """Read `<directory>/annotations.json` and decode `<directory>/images/<file_name>` for each image.

    Raises EvalSplitError naming the missing file.
    """
    annotations = directory / "annotations.json"
    if not annotations.exists():
        raise EvalSplitError(
            f"no evaluation split at {directory}: {annotations.name} is missing. Set evaluation.dataset_dir "
            "to a COCO folder (annotations.json + images/)"
        )
    raw = annotations.read_bytes()
    coco = json.loads(raw)
    if limit:
        coco["images"] = coco["images"][:limit]
        kept = {record["id"] for record in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    images = []
    for record in coco["images"]:
        path = directory / "images" / record["file_name"]
        if not path.exists():
            raise EvalSplitError(f"{annotations} lists image {record['file_name']!r}, but {path} does not exist")
        images.append(decode_image(path.read_bytes()))
    return EvalSplit(directory, coco, images, hashlib.sha256(raw).hexdigest()[:12])
