"""One OpenVINO engine per precision tier, and how the tiers' IRs are found on disk.

Each engine holds a small pool of infer requests so concurrent HTTP requests run in
parallel without sharing one request (an `InferRequest` is not thread-safe). Pre- and
post-processing are the shared ones of `tasks.detection`, so the tiers differ only by
their IR.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tasks.config import ServingConfig
from tasks.detection.export import IR_STEMS, Tier, ir_path
from tasks.detection.labels import CATEGORIES_FILE, Categories
from tasks.detection.postprocess import Detections
from tasks.errors import TailcalError

logger = logging.getLogger(__name__)


class ServingError(TailcalError):
    """The service cannot start as configured (missing IRs, unreadable model)."""


class Engine(Protocol):
    """What the app needs from a tier: detections for one image and its input size."""

    input_size: int

    def infer(self, image: np.ndarray) -> Detections: ...


@dataclass(frozen=True)
class TierPaths:
    """IR path per tier; only the tiers found are present."""

    paths: dict[str, Path]


def resolve_tier_paths(config: ServingConfig) -> TierPaths:
    """Tier IRs from explicit paths, else from `ir_dir` by the release cycle's file names."""
    explicit: dict[Tier, Path | None] = {"int8": config.int8_ir, "mixed": config.mixed_ir, "fp16": config.fp16_ir}
    paths: dict[str, Path] = {}
    for tier in IR_STEMS:  # the mixed tier is optional
        path = explicit[tier] or (ir_path(config.ir_dir, tier) if config.ir_dir else None)
        if path is None:
            continue
        if path.exists():
            paths[tier] = path
        elif explicit[tier] is not None:
            raise ServingError(f"{tier} IR {path} does not exist: point serving.{tier}_ir at an .xml file")
    if not paths:
        where = config.ir_dir or "serving.int8_ir / serving.fp16_ir"
        raise ServingError(
            f"no tier IR found in {where}: give a release cycle's ir/ directory "
            "(e.g. data/demo/mlartifacts/<run_id>/artifacts/ir) or explicit IR paths"
        )
    return TierPaths(paths)


def load_categories(config: ServingConfig, tiers: TierPaths) -> Categories | None:
    """The release's categories.json: `serving.categories`, else the one in `ir_dir`, else the one
    beside the int8 IR (or the most precise tier's); None when there is none. Raises ServingError
    when `serving.categories` names a missing file, CategoryMapError when the file is malformed."""
    if config.categories is not None:
        if not config.categories.exists():
            raise ServingError(
                f"serving.categories {config.categories} does not exist: point it at the release's "
                f"ir/{CATEGORIES_FILE}, or unset it"
            )
        return Categories.read(config.categories)
    folders = [config.ir_dir] if config.ir_dir else []
    folders += [tiers.paths[tier].parent for tier in ("int8", "mixed", "fp16") if tier in tiers.paths]
    found = next((folder / CATEGORIES_FILE for folder in folders if (folder / CATEGORIES_FILE).exists()), None)
    if found is None:
        logger.warning(
            "no %s beside the IRs: detections carry the detector's label index, not a category id or name "
            "(set serving.categories)",
            CATEGORIES_FILE,
        )
        return None
    logger.info("categories from %s", found)
    return Categories.read(found)


class OpenVinoEngine:
    """A compiled IR with `requests` infer requests shared by the service's worker threads."""

    def __init__(self, ir_path: Path, requests: int = 2, threads: int | None = None) -> None:
        from tasks.detection.runtime import load_detector

        try:
            detector = load_detector(ir_path, hint="LATENCY", threads=threads)
        except RuntimeError as exc:
            raise ServingError(f"cannot compile {ir_path}: {exc}") from exc
        self.compiled, self.adapter = detector.compiled, detector.adapter
        self.input_size = self.adapter.preprocessing.input_size
        self._requests: queue.Queue = queue.Queue()
        for _ in range(requests):
            self._requests.put(self.compiled.create_infer_request())

    def infer(self, image: np.ndarray) -> Detections:
        """uint8 RGB of any size → detections in its own pixels (the IR's preprocessing contract)."""
        return self.adapter.detect_with(self._heads, [image])[0]

    def _heads(self, batch: np.ndarray) -> list[np.ndarray]:
        request = self._requests.get()
        try:
            result = request.infer(batch)
            return [np.copy(result[output]) for output in self.compiled.outputs]
        finally:
            self._requests.put(request)


def load_engines(config: ServingConfig) -> dict[str, OpenVinoEngine]:
    """Compile every tier IR found; fails naming the IR that does not load."""
    engines = {}
    paths = resolve_tier_paths(config).paths
    for tier, path in paths.items():
        engines[tier] = OpenVinoEngine(path, config.infer_requests_per_tier, config.threads_per_request)
        logger.info("tier %s: %s (%d px)", tier, path, engines[tier].input_size)
    if missing := [tier for tier in IR_STEMS if tier not in paths]:
        logger.warning(
            "no %s tier: requests routed there go to the next more precise loaded tier, else the most precise "
            "(loaded: %s)",
            "/".join(missing),
            ", ".join(paths),
        )
    return engines


def warm_up(engines: dict[str, Engine], iterations: int) -> dict[str, float]:
    """Median service time (ms) per tier on a mid-gray frame: the seed of the latency EWMA."""
    seeds = {}
    for tier, engine in engines.items():
        frame = np.full((engine.input_size, engine.input_size, 3), 128, np.uint8)
        timings = []
        for _ in range(iterations + 1):
            started = time.perf_counter()
            engine.infer(frame)
            timings.append((time.perf_counter() - started) * 1e3)
        seeds[tier] = float(np.median(timings[1:]))
        logger.info("warm-up %s: %.2f ms", tier, seeds[tier])
    return seeds
