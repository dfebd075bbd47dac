"""Detector label ↔ COCO category id: one explicit, validated mapping shared by training and evaluation.

A detector predicts labels 0 … num_classes − 1; a COCO file names its classes by category
id, and those ids need not be 1 … N (YOLO→COCO converters write 0 … N − 1, real sets have
gaps, and the JSON list need not be sorted). Label i means category `category_ids[i]`: by
default the split's category ids sorted ascending, or an explicit `label_map`. The same
mapping turns annotations into training labels and detections back into category ids, so
a model is scored on the classes it was trained on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tasks.errors import TailcalError


class CategoryMapError(TailcalError):
    """A COCO split's categories do not fit the detector's labels (count, ids, names or label_map)."""


def split_categories(coco: dict, source: object) -> dict[int, str]:
    """The split's categories as id → name, in file order.

    Refuses (CategoryMapError naming `source`) a split without categories, a category
    without an integer id or a name, repeated ids or names (per-class results are keyed by
    name), and annotations whose category_id is not among the categories (COCOeval would
    silently drop those boxes from the ground truth).
    """
    categories = coco.get("categories") if isinstance(coco, dict) else None
    if not isinstance(categories, list) or not categories:
        raise CategoryMapError(
            f"{source} has no categories: a COCO split needs a non-empty 'categories' list of {{'id', 'name'}}"
        )
    malformed = [c for c in categories if not isinstance(c, dict) or type(c.get("id")) is not int or not c.get("name")]
    if malformed:
        raise CategoryMapError(
            f"{source}: categories {malformed[:3]} lack an integer 'id' or a 'name': give each category both"
        )
    ids = [c["id"] for c in categories]
    names = [c["name"] for c in categories]
    if repeated := sorted(i for i, n in Counter(ids).items() if n > 1):
        raise CategoryMapError(f"{source} lists category ids {repeated} more than once: each category needs its own id")
    if repeated_names := sorted(name for name, n in Counter(names).items() if n > 1):
        raise CategoryMapError(
            f"{source} names several categories {repeated_names}: per-class mAP is keyed by name, so give each "
            "category a distinct name"
        )
    known = set(ids)
    unknown = _ordered({a.get("category_id") for a in coco.get("annotations", [])} - known)
    if unknown:
        raise CategoryMapError(
            f"{source} has annotations with category_id {unknown}, which its categories (ids {sorted(ids)}) do not "
            "list: add those categories or fix the annotations' category_id"
        )
    return dict(zip(ids, names, strict=True))


def resolve_category_ids(
    category_ids: Sequence[int],
    source: object,
    num_classes: int | None = None,
    label_map: Sequence[int] | None = None,
    setting: str = "evaluation.label_map",
) -> tuple[int, ...]:
    """Category id of each detector label: `label_map` when given, else the split's ids sorted ascending.

    `category_ids` are the split's own ids (from `split_categories`). With `num_classes`
    (the detector's), the split must have exactly that many categories. `label_map` must
    name each of the split's categories exactly once. Every refusal is a CategoryMapError
    naming `source`, the ids found and the setting to change.
    """
    found = sorted(category_ids)
    if num_classes is not None and len(found) != num_classes:
        raise CategoryMapError(
            f"{source} has {len(found)} categories (ids {found}), but the detector predicts {num_classes} classes "
            f"(detector.num_classes = {num_classes}): evaluate on a split with the detector's {num_classes} classes, "
            f"or use a detector trained on these {len(found)} (detector.num_classes = {len(found)})"
        )
    if label_map is None:
        return tuple(found)
    chosen = list(label_map)
    if num_classes is not None and len(chosen) != num_classes:
        raise CategoryMapError(
            f"{setting} {chosen} has {len(chosen)} entries, but detector.num_classes is {num_classes}: give one "
            f"category id per detector label (label i → {setting}[i]), from the ids of {source}: {found}"
        )
    if repeated := sorted(i for i, n in Counter(chosen).items() if n > 1):
        raise CategoryMapError(
            f"{setting} {chosen} repeats category ids {repeated}: each detector label needs its own category "
            f"(ids of {source}: {found})"
        )
    if missing := _ordered(set(chosen) - set(found)):
        raise CategoryMapError(
            f"{setting} {chosen} names category ids {missing} that {source} does not have (ids found: {found}): "
            "use only ids from its categories"
        )
    if uncovered := sorted(set(found) - set(chosen)):
        raise CategoryMapError(
            f"{setting} {chosen} leaves categories {uncovered} of {source} (ids found: {found}) without a detector "
            "label: map every category to one label"
        )
    return tuple(chosen)


def _ordered(values: set) -> list:
    # Ids read from JSON may be of any type; sort within each type so a message never fails to render.
    return sorted(values, key=lambda v: (type(v).__name__, v if isinstance(v, int | float | str) else repr(v)))
