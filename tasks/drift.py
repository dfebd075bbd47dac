"""Calibration drift: does production still look like the calibration set? PSI per feature.

Features are the service's own difficulty estimate, the image statistics behind it
(brightness, contrast, sharpness, noise, saturated fraction) and one categorical grouping
of the frames, the one selection stratifies on (`tasks.selection.grouping`):

- `condition`, the pool's condition tag, when every frame of both samples carries one;
- otherwise `factors`: each frame's factor tags (low_light, motion_blur, … — the prompt's
  vocabulary), reduced to its rarest tag by the reference's counts. Real pools and
  production frames rarely carry a condition column, and a column present on one side only
  (or on some rows only: untagged frames would form a category of their own, read as a
  shift — PSI 4.6 on identical pixels with every other production row untagged) would read
  as a shift of its own.

Factor tags come from the same local estimate on both sides (`tasks.difficulty.assess`,
the formula the reference scorer answers with): production frames are never sent to the
VLM, and tags from the VLM on one side against the estimate on the other would measure the
difference between two judges, not drift.

Continuous features are binned at the reference's quantiles (so each reference bin
holds ~1/bins of it); tags are their own categories. Empty bins get `epsilon`, and
PSI = Σ (p − q)·ln(p / q) with q the reference and p the production proportions.
Rule of thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25 shifted.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq

from tasks.config import DriftConfig
from tasks.difficulty import STAT_NAMES, ImageAssessment, assess
from tasks.errors import ConfigError, TailcalError
from tasks.imaging import decode_rgb
from tasks.ingest.models import Candidate
from tasks.selection.grouping import UNKNOWN_STRATUM, factor_rarity, factor_stratum

logger = logging.getLogger(__name__)

CONTINUOUS_FEATURES: tuple[str, ...] = ("difficulty", *STAT_NAMES)
CATEGORICAL_FEATURES: tuple[str, ...] = ("condition",)
FACTOR_FEATURE = "factors"


class DriftError(TailcalError):
    """Drift cannot be judged (too few samples, no common features)."""


@dataclass
class FeatureSample:
    """Per-image features of one sample: continuous values and categorical tags, aligned by row."""

    ids: list[str] = field(default_factory=list)
    continuous: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in CONTINUOUS_FEATURES})
    categorical: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in CATEGORICAL_FEATURES})
    factors: list[tuple[str, ...]] = field(default_factory=list)  # per row: the estimate's factor tags
    digests: list[bytes] = field(default_factory=list)  # per row: a digest of the decoded pixels

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, image_id: str, image: np.ndarray, condition: str | None) -> None:
        assessment = assess(image)
        features = _continuous(assessment)
        self.ids.append(image_id)
        for name in CONTINUOUS_FEATURES:
            self.continuous[name].append(features[name])
        self.categorical["condition"].append(condition or UNKNOWN_STRATUM)
        self.factors.append(assessment.factors)
        self.digests.append(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest())

    @property
    def fully_tagged(self) -> bool:
        """Every frame carries a condition tag."""
        return all(tag != UNKNOWN_STRATUM for tag in self.categorical["condition"])


def image_features(image: np.ndarray) -> dict[str, float]:
    """uint8 RGB → the continuous drift features (difficulty + image statistics), from one pass."""
    return _continuous(assess(image))


def _continuous(assessment: ImageAssessment) -> dict[str, float]:
    return {"difficulty": assessment.difficulty, **assessment.statistics.as_dict()}


def sample_features(batches: Iterable[list[Candidate]], keep: set[str] | None = None) -> FeatureSample:
    """Features of every candidate (or only those whose id is in `keep`) streamed from ingest.

    With `keep`, reading stops once every kept id was found.
    """
    sample = FeatureSample()
    for batch in batches:
        for candidate in batch:
            if keep is None or candidate.id in keep:
                sample.add(candidate.id, decode_rgb(candidate.image), candidate.condition)
        if keep is not None and len(sample) == len(keep):
            break
    return sample


ReferenceKind = Literal["pool", "selection"]
REFERENCE_FILES: dict[str, str] = {"pool": "scores.parquet", "selection": "selection.parquet"}


def find_reference(
    runs_dir: Path, reference: ReferenceKind, path: Path | None = None, run_id: str | None = None
) -> Path:
    """The reference Parquet: `path` as given, `<runs_dir>/<run_id>/<scores|selection>.parquet`,
    or (neither given, as on a schedule) the newest release run's file under `runs_dir`.

    Release runs end by writing report.md; ablation and scoring-only runs also leave a
    scores.parquet, and do not count. Raises ConfigError naming what is missing.
    """
    name = REFERENCE_FILES[reference]
    if path is None and run_id:
        path = runs_dir / run_id / name
    if path is None:
        runs = [p for p in runs_dir.glob(f"*/{name}") if (p.parent / "report.md").exists()]
        if not runs:
            raise ConfigError(
                f"no release run under {runs_dir} has a {name}: run the release cycle first, "
                "or name the reference with reference_path / reference_run_id"
            )
        path = max(runs, key=lambda p: p.stat().st_mtime)
        logger.info("reference: newest release run %s", path.parent.name)
    if not path.exists():
        raise ConfigError(f"reference {path} does not exist: give a release run's scores.parquet or selection.parquet")
    return path


def reference_ids(path: Path) -> set[str]:
    """The candidate ids a scores.parquet or selection.parquet holds."""
    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())


@dataclass(frozen=True)
class FeaturePsi:
    """PSI of one feature, with the bins and both proportions (for the report and plots)."""

    name: str
    kind: str  # "continuous" | "categorical"
    psi: float
    bins: list[str]
    reference: list[float]
    production: list[float]


def _psi(reference_counts: np.ndarray, production_counts: np.ndarray, epsilon: float) -> tuple[float, list, list]:
    q = np.maximum(reference_counts / max(reference_counts.sum(), 1), epsilon)
    p = np.maximum(production_counts / max(production_counts.sum(), 1), epsilon)
    q, p = q / q.sum(), p / p.sum()
    return float(np.sum((p - q) * np.log(p / q))), q.tolist(), p.tolist()


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles; ties collapse (a constant feature gives one edge)."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def psi_continuous(
    name: str, reference: Iterable[float], production: Iterable[float], bins: int = 10, epsilon: float = 1e-4
) -> FeaturePsi:
    """PSI over `bins` reference-quantile bins (open-ended at both sides, so nothing falls outside)."""
    ref, prod = np.asarray(list(reference), np.float64), np.asarray(list(production), np.float64)
    edges = quantile_edges(ref, bins)
    n_bins = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=n_bins)
    prod_counts = np.bincount(np.searchsorted(edges, prod, side="right"), minlength=n_bins)
    psi, q, p = _psi(ref_counts.astype(np.float64), prod_counts.astype(np.float64), epsilon)
    labels = [f"<{edges[0]:.4g}"] if len(edges) else ["all"]
    labels += [f"[{lo:.4g},{hi:.4g})" for lo, hi in itertools.pairwise(edges)]
    labels += [f">={edges[-1]:.4g}"] if len(edges) else []
    return FeaturePsi(name, "continuous", psi, labels, q, p)


def psi_categorical(
    name: str, reference: Iterable[str], production: Iterable[str], epsilon: float = 1e-4
) -> FeaturePsi:
    """PSI over the union of categories; a category new in production counts against the reference's epsilon."""
    ref, prod = Counter(reference), Counter(production)
    categories = sorted(set(ref) | set(prod))
    psi, q, p = _psi(
        np.array([ref[c] for c in categories], np.float64), np.array([prod[c] for c in categories], np.float64), epsilon
    )
    return FeaturePsi(name, "categorical", psi, categories, q, p)


@dataclass(frozen=True)
class DriftReport:
    """PSI per feature and the verdict: recalibrate when any feature exceeds the threshold.

    `grouping` names the categorical feature: "condition" (the tag both samples carry) or
    "factors" (the frames' factor tags)."""

    features: dict[str, FeaturePsi]
    threshold: float
    n_reference: int
    n_production: int
    grouping: str = "condition"

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(name for name, f in self.features.items() if f.psi > self.threshold)

    @property
    def recalibrate(self) -> bool:
        return bool(self.drifted)

    @property
    def max_psi(self) -> float:
        return max(f.psi for f in self.features.values())

    def metrics(self) -> dict[str, float]:
        """`drift.psi.<feature>`, `drift.psi_max`, `drift.recalibrate` (0/1) and sample sizes, for MLflow."""
        metrics = {f"drift.psi.{name}": f.psi for name, f in self.features.items()}
        return metrics | {
            "drift.psi_max": self.max_psi,
            "drift.recalibrate": float(self.recalibrate),
            "drift.n_reference": float(self.n_reference),
            "drift.n_production": float(self.n_production),
        }

    def as_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "grouping": self.grouping,
            "recalibrate": self.recalibrate,
            "drifted": list(self.drifted),
            "n_reference": self.n_reference,
            "n_production": self.n_production,
            "features": {name: asdict(f) for name, f in self.features.items()},
        }


MISSING_REFERENCE_TOLERANCE = 0.01  # share of the release's reference frames that may have left the pool
SHARED_FRAMES_LIMIT = 0.5  # share of the production sample that may be reference frames


def check_comparable(
    expected_reference: int,
    reference: FeatureSample,
    production: FeatureSample,
    where: dict[str, str],
) -> None:
    """Refuse a comparison whose PSI would be wrong without an error:

    - more than 1 % of the release's reference frames are no longer found in the pool: PSI
      against what is left compares production with a different set than the release
      calibrated on (measured: 40 of 300 found gave "recalibrate" on identical pixels);
    - more than half of the production sample are reference frames (the same pixels, whatever
      their ids): production is the calibration pool itself, and PSI ≈ 0 whatever production does.

    `where` names the inputs for the message: `pool`, `reference` and `production`.
    Raises DriftError.
    """
    missing = expected_reference - len(reference)
    if missing > MISSING_REFERENCE_TOLERANCE * expected_reference:
        raise DriftError(
            f"{missing} of the {expected_reference} reference images in {where['reference']} are not in the pool at "
            f"{where['pool']}: PSI against the {len(reference)} left would not describe the release's calibration "
            "data. Point pool.uri at the pool that release scored, or compare with a newer release (--reference-run-id)"
        )
    reference_pixels = set(reference.digests)
    shared = sum(1 for digest in production.digests if digest in reference_pixels)
    if len(production) and shared > SHARED_FRAMES_LIMIT * len(production):
        raise DriftError(
            f"{shared} of the {len(production)} production frames sampled from {where['production']} are the "
            "release's own reference frames (the same pixels): that is the calibration pool, not production, and "
            "its PSI would be ~0 whatever production does. Point drift.production_uri (--production-uri) at frames "
            "that arrived after the release"
        )


def compare_samples(reference: FeatureSample, production: FeatureSample, config: DriftConfig) -> DriftReport:
    """PSI of every feature, production vs reference (the calibration set).

    The categorical feature is `condition` when every frame of both samples carries a condition tag, else
    `factors` (see the module docstring); `DriftReport.grouping` says which.
    """
    fixes = {
        "reference (calibration set)": "compare with --reference pool (the scored pool, not the K selected images)",
        "production sample": "sample more production frames (drift.production_subset_size, or a drift.production_uri "
        "that holds more)",
    }
    for label, sample in (("reference (calibration set)", reference), ("production sample", production)):
        if len(sample) < config.min_samples:
            raise DriftError(
                f"{label} has {len(sample)} images, fewer than drift.min_samples={config.min_samples}: "
                f"{fixes[label]}, or lower min_samples"
            )
    features = {
        name: psi_continuous(name, reference.continuous[name], production.continuous[name], config.bins, config.epsilon)
        for name in CONTINUOUS_FEATURES
    }
    if len(reference) and len(production) and reference.fully_tagged and production.fully_tagged:
        grouping = "condition"
        features["condition"] = psi_categorical(
            "condition", reference.categorical["condition"], production.categorical["condition"], config.epsilon
        )
    else:
        # One rarity order for both sides (the reference's), so a frame's stratum does not
        # depend on which sample it is in; a tag only production names becomes its own category.
        grouping = FACTOR_FEATURE
        rarity = factor_rarity(reference.factors)
        features[FACTOR_FEATURE] = psi_categorical(
            FACTOR_FEATURE,
            [factor_stratum(tags, rarity) for tags in reference.factors],
            [factor_stratum(tags, rarity) for tags in production.factors],
            config.epsilon,
        )
    report = DriftReport(features, config.psi_threshold, len(reference), len(production), grouping)
    logger.info(
        "drift: max PSI %.3f (%s), recalibrate=%s",
        report.max_psi,
        ", ".join(f"{n}={f.psi:.3f}" for n, f in features.items()),
        report.recalibrate,
    )
    return report
