"""The labelled evaluation split (COCO `annotations.json` + `images/`), loaded once per run.

FP16 and INT8 evaluation, activation clipping and accuracy-controlled PTQ all read the
same decoded images, so a run decodes them once and hands the split to each stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.detection.labels import resolve_category_ids, split_categories
from tasks.detection.preprocess import decode_image
from tasks.errors import TailcalError


class EvalSplitError(TailcalError):
    """The evaluation split cannot be read (missing annotations or image files)."""


@dataclass(frozen=True)
class EvalSplit:
    """A COCO dict and its decoded images (uint8 RGB [H, W, 3]) in `coco["images"]` order.

    `digest` identifies the annotations (sha256 of annotations.json, 12 hex digits), so a
    cached evaluation is reused only for the same split. `category_ids[i]` is the COCO
    category id of detector label i (`tasks.detection.labels`), validated at load.
    """

    directory: Path
    coco: dict
    images: list[np.ndarray]
    digest: str
    category_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_ids(self) -> list[int]:
        return [record["id"] for record in self.coco["images"]]

    @property
    def cache_key(self) -> str:
        """Names a cached evaluation: the annotations, plus the label mapping when it is not the
        default (the sorted ids, which the annotations already fix)."""
        key = f"{self.directory.name}-{self.digest}"
        if list(self.category_ids) != sorted(self.category_ids):
            mapping = ",".join(map(str, self.category_ids))
            key += f"-labels-{hashlib.sha256(mapping.encode()).hexdigest()[:8]}"
        return key

    def head(self, n: int) -> EvalSplit:
        """The first `n` images and their annotations (the same split when n ≥ its size)."""
        if n >= len(self):
            return self
        coco = dict(self.coco)
        coco["images"] = self.coco["images"][:n]
        kept = {record["id"] for record in coco["images"]}
        coco["annotations"] = [a for a in self.coco["annotations"] if a["image_id"] in kept]
        return EvalSplit(self.directory, coco, self.images[:n], self.digest, self.category_ids)


def load_eval_split(
    directory: Path,
    limit: int | None = None,
    *,
    num_classes: int | None = None,
    label_map: Sequence[int] | None = None,
) -> EvalSplit:
    """Read `<directory>/annotations.json` and decode `<directory>/images/<file_name>` for each image.

    Detector label i is scored as category `label_map[i]`, or by default the i-th smallest
    category id. Pass the detector's `num_classes` (the flows always do) to refuse a split
    with another number of categories; without it (tests, benches) the count is not checked.

    Raises EvalSplitError naming the missing file, CategoryMapError (`tasks.detection.labels`)
    naming the file and the category ids found when the categories and the detector disagree.
    """
    annotations = directory / "annotations.json"
    if not annotations.exists():
        raise EvalSplitError(
            f"no evaluation split at {directory}: {annotations.name} is missing. Set evaluation.dataset_dir "
            "to a COCO folder (annotations.json + images/)"
        )
    raw = annotations.read_bytes()
    coco = json.loads(raw)
    # The whole file's categories and annotations, before `limit` hides any.
    category_ids = resolve_category_ids(
        list(split_categories(coco, annotations)), annotations, num_classes=num_classes, label_map=label_map
    )
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
    return EvalSplit(directory, coco, images, hashlib.sha256(raw).hexdigest()[:12], category_ids)
