"""Per-image activation profiles of the FP model: the (min, max) each image reaches at each quantized site.

NNCF's range estimators (MINMAX, MEAN_MINMAX) build every activation range from exactly
these per-image minima and maxima, so a profile of the pool says, before any quantization,
which images reach which layer's extremes. The coverage and widest_ranges strategies read it.

Sites: by default the tensor feeding each (Group)Convolution's data input, which is where
NNCF puts activation FakeQuantize ops; a tensor feeding several convolutions is profiled
once and named after its producer (`tasks.calibration.probes`), as clipping names it, so
profiles and clipping reports line up layer by layer. `site="output"` profiles the convolutions' own
outputs instead (before the bias Add that conversion leaves as a separate op).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from tasks.calibration.probes import ActivationProbe, read_model, tensor_name
from tasks.errors import TailcalError

logger = logging.getLogger(__name__)

CONV_TYPES = ("Convolution", "GroupConvolution")
Site = Literal["input", "output"]


class ImageCandidate(Protocol):
    """What pool profiling reads of a candidate (`tasks.ingest.Candidate` has it)."""

    id: str
    image: bytes


class ActivationProfileError(TailcalError):
    """Activation profiles cannot be taken as asked (no convolutions, no images, ids that do not match)."""


@dataclass(frozen=True)
class ActivationProfiles:
    """`values[i, j] = (min, max)` of image i's activation at site `layer_names[j]`.

    `ids` names the rows when the caller passed them; selection uses it to align profiles
    with the pool by id rather than by position.
    """

    layer_names: tuple[str, ...]
    values: np.ndarray  # float32 [n_images, n_layers, 2]
    ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.shape[2] != 2:
            raise ActivationProfileError(f"values must be [n_images, n_layers, 2], got shape {self.values.shape}")
        if self.values.shape[1] != len(self.layer_names):
            raise ActivationProfileError(
                f"{len(self.layer_names)} layer names for {self.values.shape[1]} profiled layers"
            )
        if self.ids is not None and len(self.ids) != self.values.shape[0]:
            raise ActivationProfileError(f"{len(self.ids)} ids for {self.values.shape[0]} profiled images")


def _sites(model, site: Site) -> list:
    """The profiled op outputs, in topological order, each tensor once."""
    seen: set[str] = set()
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in CONV_TYPES:
            continue
        output = op.input_value(0) if site == "input" else op.output(0)
        name = tensor_name(output)
        if name not in seen:
            seen.add(name)
            found.append(output)
    return found


def _spread(items: list, max_layers: int | None) -> list:
    # Evenly spaced over depth rather than the first N: early, middle and late layers
    # all get a say in coverage when the profile has to be small.
    if max_layers is None or len(items) <= max_layers:
        return items
    if max_layers < 1:
        raise ActivationProfileError(f"max_layers must be ≥ 1 or None, got {max_layers}")
    picks = np.unique(np.linspace(0, len(items) - 1, max_layers).round().astype(int))
    return [items[i] for i in picks]


def activation_profiles(
    ir_path: str | Path,
    images: Iterable[np.ndarray],
    max_layers: int | None = None,
    ids: Sequence[str] | None = None,
    site: Site = "input",
) -> ActivationProfiles:
    """Run the FP IR on `images` (preprocessed float32 NCHW batches) and keep each image's min/max per site.

    One inference per batch returns every site (they are added as extra model outputs), and
    only two numbers per image and site are kept, so memory does not grow with the images'
    activations.
    """
    if site not in ("input", "output"):
        raise ActivationProfileError(f"site must be 'input' or 'output', got {site!r}")
    model = read_model(ir_path)
    sites = _spread(_sites(model, site), max_layers)
    if not sites:
        raise ActivationProfileError(f"{ir_path} has no Convolution or GroupConvolution ops to profile")
    probe = ActivationProbe(model, sites)
    rows = []
    for batch in images:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ActivationProfileError(f"images must be NCHW float32 batches, got shape {batch.shape}")
        per_site = []
        for activation in probe(batch).values():
            flat = activation.reshape(batch.shape[0], -1)
            per_site.append(np.stack([flat.min(axis=1), flat.max(axis=1)], axis=1))
        rows.append(np.stack(per_site, axis=1))
    if not rows:
        raise ActivationProfileError("no images to profile: pass at least one preprocessed batch")
    values = np.concatenate(rows).astype(np.float32)
    if ids is not None and len(ids) != len(values):
        raise ActivationProfileError(f"{len(ids)} ids given for {len(values)} profiled images: pass one id per image")
    logger.info("activation profiles: %d images × %d %s sites", len(values), len(sites), site)
    return ActivationProfiles(probe.names, values, tuple(ids) if ids is not None else None)


def profile_pool(ir_path: str | Path, batches: Iterable[Sequence[ImageCandidate]]) -> ActivationProfiles:
    """Profiles of every candidate streamed from ingest, one image at a time, with their ids.

    For `coverage` and `widest_ranges`: the pool is read once more, and only two numbers per image
    and site are kept.
    """
    from tasks.detection.runtime import preprocessing_of

    preprocessing = preprocessing_of(Path(ir_path))
    ids: list[str] = []

    def inputs():
        for batch in batches:
            for candidate in batch:
                ids.append(candidate.id)
                yield preprocessing.batch([candidate.image])[0]

    profiles = activation_profiles(ir_path, inputs())
    # ids fill in while the generator is consumed, so they are attached afterwards.
    return ActivationProfiles(profiles.layer_names, profiles.values, tuple(ids))


def merge_profiles(parts: Sequence[ActivationProfiles]) -> ActivationProfiles:
    """Profiles of consecutive shards of a pool (`profile_pool` on each), as one, in the order given.

    Every image is profiled alone, so a pool profiled in shards (on several processes) equals
    the pool profiled at once. Raises ActivationProfileError when there are no parts, or when
    their layers or ids differ in kind (profiles of different IRs, or some without ids).
    """
    if not parts:
        raise ActivationProfileError("no profiles to merge: profile at least one shard of the pool")
    layers = parts[0].layer_names
    if any(part.layer_names != layers for part in parts):
        raise ActivationProfileError("profiles of different layers cannot be merged: profile every shard with one IR")
    if len({part.ids is None for part in parts}) > 1:
        raise ActivationProfileError("some profiles have ids and some not: profile every shard with profile_pool")
    ids = None if parts[0].ids is None else tuple(i for part in parts for i in part.ids)
    return ActivationProfiles(layers, np.concatenate([part.values for part in parts]), ids)
