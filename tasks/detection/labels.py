"""Detector label ↔ COCO category id: one explicit, validated mapping shared by training and evaluation.

A detector predicts labels 0 … num_classes − 1; a COCO file names its classes by category
id, and those ids need not be 1 … N (YOLO→COCO converters write 0 … N − 1, real sets have
gaps, and the JSON list need not be sorted). Label i means category `category_ids[i]`: by
default the split's category ids sorted ascending, or an explicit `label_map`. The same
mapping turns annotations into training labels and detections back into category ids, so
a model is scored on the classes it was trained on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    annotated: Collection[int] | None = None,
) -> tuple[int, ...]:
    """Category id of each detector label: `label_map` when given, else the split's ids sorted ascending.

    `category_ids` are the split's own ids (from `split_categories`); `annotated` those that
    hold at least one box (None: all do). Without `label_map` and with `num_classes` (the
    detector's), the split must have exactly that many categories. `label_map` must name each
    category that holds boxes exactly once; categories without boxes (a labelling tool's unused
    or parent category, e.g. Roboflow's id 0) may be left out. Every refusal is a
    CategoryMapError naming `source`, the ids found and the setting to change.
    """
    found = sorted(category_ids)
    empty = sorted(set(found) - set(annotated)) if annotated is not None else []
    if label_map is None:
        if num_classes is not None and len(found) != num_classes:
            used = [i for i in found if i not in empty]
            hint = (
                f"; categories {empty} hold no boxes (a labelling tool's unused or parent category?): to leave them "
                f"out, set {setting} to {used}, the category of each detector label in order"
                if empty and len(used) == num_classes
                else ""
            )
            raise CategoryMapError(
                f"{source} has {len(found)} categories (ids {found}), but the detector predicts {num_classes} classes "
                f"(detector.num_classes = {num_classes}): evaluate on a split with the detector's {num_classes} "
                f"classes, or use a detector trained on these {len(found)} (detector.num_classes = {len(found)})" + hint
            )
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
    if uncovered := sorted(set(found) - set(chosen) - set(empty)):
        raise CategoryMapError(
            f"{setting} {chosen} leaves categories {uncovered} of {source} (ids found: {found}) without a detector "
            "label: map every category that holds boxes to one label"
        )
    return tuple(chosen)


def _ordered(values: set) -> list:
    # Ids read from JSON may be of any type; sort within each type so a message never fails to render.
    return sorted(values, key=lambda v: (type(v).__name__, v if isinstance(v, int | float | str) else repr(v)))


CATEGORIES_FILE = "categories.json"


@dataclass(frozen=True)
class Categories:
    """What each detector label means, written beside a release's IRs (`categories.json`) so
    the inference service answers with COCO category ids and names, not bare label indices.

    `ids[i]` and `names[i]` are label i's category id and name (the mapping evaluation used).
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def of_split(cls, coco: dict, category_ids: Sequence[int]) -> Categories:
        """From an eval split's COCO dict and its validated label → category id mapping."""
        by_id = {c["id"]: c["name"] for c in coco["categories"]}
        return cls(tuple(category_ids), tuple(by_id[i] for i in category_ids))

    def write(self, path: Path) -> Path:
        entries = [{"label": i, "id": c, "name": n} for i, (c, n) in enumerate(zip(self.ids, self.names, strict=True))]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=1))
        return path

    @classmethod
    def read(cls, path: Path) -> Categories:
        """Raises CategoryMapError naming `path` when it is not a list of {label, id, name} with
        labels 0 … n−1 in order and distinct ids."""
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CategoryMapError(f"cannot read {path} ({exc}): copy categories.json from the release's ir/") from None
        well_formed = isinstance(entries, list) and all(
            isinstance(e, dict) and type(e.get("id")) is int and isinstance(e.get("name"), str) for e in entries
        )
        if not well_formed or [e.get("label") for e in entries] != list(range(len(entries))) or not entries:
            raise CategoryMapError(
                f"{path} is not a list of {{label, id, name}} for labels 0, 1, …: copy categories.json from the "
                "release's ir/ folder"
            )
        ids = tuple(e["id"] for e in entries)
        if len(set(ids)) != len(ids):
            raise CategoryMapError(f"{path} gives several labels the same category id: each label needs its own")
        return cls(ids, tuple(e["name"] for e in entries))

    def describe(self, label: int) -> dict[str, int | str]:
        """{"category_id", "category"} of a detector label; CategoryMapError when the label has none."""
        if not 0 <= label < len(self.ids):
            raise CategoryMapError(
                f"the detector predicted label {label}, but categories.json names labels 0–{len(self.ids) - 1}: "
                "serve the categories.json of the release these IRs come from"
            )
        return {"category_id": self.ids[label], "category": self.names[label]}
