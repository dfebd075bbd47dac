"""Strata for stratified sampling: the pool's condition column, or the VLM's factor tags.

Real pools rarely carry a `condition` column; what every scored pool has is what the VLM
returned for each image, a difficulty and its `factors` (low_light, motion_blur, …, from
the prompt's enum; see configs/prompts/difficulty-v1.yaml). Grouping by factors:

- An image the VLM tagged with several factors counts in its *rarest* factor's stratum
  (fewest images in the pool named it; ties by name). Strata stay one per tag instead of
  one per combination, which would split the pool into many slivers of a few images each,
  and a rare factor is never absorbed into a common one it co-occurs with (low_light
  frames are also low_contrast; the tail is low_light).
- A scored image with no factor is in `NO_FACTOR`; an unscored one (no reply, so no tags)
  in `UNKNOWN_STRATUM`.

The drift monitor groups frames the same way, with the rarity order of its reference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

UNKNOWN_STRATUM = "unknown"
NO_FACTOR = "no_factor"


def factor_rarity(factor_lists: Iterable[Sequence[str] | None]) -> Counter:
    """How many images name each tag (a tag repeated in one image counts once)."""
    return Counter(tag for tags in factor_lists if tags for tag in set(tags))


def factor_stratum(factors: Sequence[str] | None, rarity: Mapping[str, int]) -> str:
    """The stratum of an image with `factors` (None: not scored) under the tag counts `rarity`.

    A tag `rarity` does not hold counts as rarest of all (0): a tag the reference never saw is
    its own stratum.
    """
    if factors is None:
        return UNKNOWN_STRATUM
    if not factors:
        return NO_FACTOR
    return min(set(factors), key=lambda tag: (rarity.get(tag, 0), tag))
