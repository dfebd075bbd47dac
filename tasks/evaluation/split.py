"""The labelled evaluation split (COCO `annotations.json` + `images/`), loaded once per run.

FP16 and INT8 evaluation, activation clipping and accuracy-controlled PTQ all read the
same decoded images, so a run decodes them once and hands the split to each stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.detection.labels import resolve_category_ids, split_categories
from tasks.errors import TailcalError
from tasks.imaging import ImageDecodeError, decode_rgb

logger = logging.getLogger(__name__)


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

    Annotation ids are renumbered 1…N (COCOeval reads id 0 as "unmatched" and looks boxes up
    by id, so repeated ids or an id 0 would lower mAP); the user's ids carry no other meaning.

    Raises EvalSplitError naming the missing file or a split with no ground-truth boxes,
    CategoryMapError (`tasks.detection.labels`) naming the file and the category ids found when
    the categories and the detector disagree.
    """
    annotations = directory / "annotations.json"
    if not annotations.exists():
        raise EvalSplitError(
            f"no evaluation split at {directory}: {annotations.name} is missing. Set evaluation.dataset_dir "
            "to a COCO folder (annotations.json + images/)"
        )
    raw = annotations.read_bytes()
    coco = _read_coco(raw, annotations)
    # The whole file's categories and annotations, before `limit` hides any.
    category_ids = resolve_category_ids(
        list(split_categories(coco, annotations)),
        annotations,
        num_classes=num_classes,
        label_map=label_map,
        annotated={a.get("category_id") for a in coco["annotations"]},
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
        try:
            image = decode_rgb(path.read_bytes())
        except ImageDecodeError as exc:
            raise EvalSplitError(f"{path}: {exc}") from None
        _check_size(record, image, annotations)
        images.append(image)
    _fit_boxes_to_images(coco, annotations)
    if not any(not a.get("iscrowd", 0) for a in coco["annotations"]):
        which = f"its first {limit} images hold" if limit else "it holds"
        raise EvalSplitError(
            f"{annotations}: {which} no ground-truth boxes (crowd boxes do not count), so mAP is undefined: "
            "point evaluation.dataset_dir at a split whose objects are labelled"
        )
    # COCOeval looks boxes up by annotation id and reads id 0 as "unmatched": ids that repeat
    # (two exports merged) or start at 0 (Roboflow) lowered mAP without an error. They mean
    # nothing else, so every split is scored under ids 1…N of its own.
    for number, annotation in enumerate(coco["annotations"], start=1):
        annotation["id"] = number
    return EvalSplit(directory, coco, images, hashlib.sha256(raw).hexdigest()[:12], category_ids)


def _read_coco(raw: bytes, source: Path) -> dict:
    """The parsed file, with the structure COCOeval relies on checked (it fails deep, or worse,
    drops boxes silently, on what is refused here)."""
    try:
        coco = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalSplitError(f"{source} is not valid JSON ({exc}): export the split again as COCO JSON") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise EvalSplitError(f"{source} has no 'images' list: a COCO split needs images, annotations and categories")
    if not isinstance(coco.get("annotations"), list):
        raise EvalSplitError(f"{source} has no 'annotations' list: a COCO split needs its boxes under 'annotations'")
    for record in coco["images"]:
        if not isinstance(record, dict) or type(record.get("id")) is not int or not record.get("file_name"):
            raise EvalSplitError(f"{source}: image {str(record)[:120]} needs an integer 'id' and a 'file_name'")
    ids = [record["id"] for record in coco["images"]]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise EvalSplitError(f"{source} lists image ids {repeated} more than once: each image needs its own id")
    known = set(ids)
    for annotation in coco["annotations"]:
        where = f"{source}: annotation {str(annotation)[:120]}"
        if not isinstance(annotation, dict) or type(annotation.get("id")) is not int:
            raise EvalSplitError(f"{where} needs an integer 'id'")
        if annotation.get("image_id") not in known:
            raise EvalSplitError(f"{where} names image_id {annotation.get('image_id')!r}, which 'images' lacks")
        box = annotation.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
            raise EvalSplitError(f"{where} needs a 'bbox' of four numbers [x, y, width, height]")
    return coco


def _check_size(record: dict, image: np.ndarray, source: Path) -> None:
    """The size the file declares is the size of the picture as shown, or the boxes are in another frame."""
    height, width = image.shape[:2]
    declared = (record.get("width"), record.get("height"))
    if declared == (None, None):
        record["width"], record["height"] = width, height
        return
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() for v in declared):
        raise EvalSplitError(
            f"{source}: image {record['file_name']!r} has width {declared[0]!r} and height {declared[1]!r}: "
            f"write both as whole numbers (this image is {width}×{height}), or leave both out"
        )
    declared = record["width"], record["height"] = int(declared[0]), int(declared[1])
    if declared == (width, height):
        return
    if declared == (height, width):
        raise EvalSplitError(
            f"{source}: image {record['file_name']!r} is declared {declared[0]}×{declared[1]} but shows "
            f"{width}×{height} upright (its EXIF orientation turns it): the annotations are in the stored frame; "
            "export them in the upright frame, or strip the orientation tag from the image"
        )
    raise EvalSplitError(
        f"{source}: image {record['file_name']!r} is declared {declared[0]}×{declared[1]} but is {width}×{height}: "
        "the boxes would be scored against another picture; fix width/height or the image"
    )


def _fit_boxes_to_images(coco: dict, source: Path) -> None:
    """Clip ground-truth boxes to their image and drop those with no area left.

    A detector's boxes are clipped to the image, so a box reaching outside could never be
    matched exactly, and a zero-area box never at all: either would lower mAP unseen.
    """
    size_of = {record["id"]: (record["width"], record["height"]) for record in coco["images"]}
    kept, dropped = [], []
    for annotation in coco["annotations"]:
        width, height = size_of[annotation["image_id"]]
        x, y, w, h = (float(v) for v in annotation["bbox"])
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            dropped.append(annotation["id"])
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            annotation["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        annotation.setdefault("area", (x1 - x0) * (y1 - y0))
        kept.append(annotation)
    if dropped:
        logger.warning(
            "%s: %d annotation(s) with no area inside their image were dropped (ids %s): fix them in the labels",
            source,
            len(dropped),
            dropped[:10],
        )
    coco["annotations"] = kept
