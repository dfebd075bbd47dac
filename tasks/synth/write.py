"""Write the synthetic benchmark: a candidate pool as Parquet and labelled COCO splits.

The pool streams to disk in record batches (one ParquetWriter per part file), so an
80,000-candidate pool never sits in memory. Every random draw comes from a generator
seeded by (seed, split, scene index), so output is identical for a seed whatever the
batch size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import SyntheticConfig
from tasks.synth.render import DEFECT_CLASSES, Frame, render_frame, render_scene
from tasks.synth.schedule import ScenePlan, condition_weights, plan_scenes, source_of

POOL_SCHEMA_INLINE = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("class_hint", pa.string()),
        ("condition", pa.string()),
        ("source", pa.string()),
        ("captured_at", pa.timestamp("ms", tz="UTC")),
        ("scene_id", pa.string()),
    ]
)
POOL_SCHEMA_URI = pa.schema([("image_uri", pa.string()) if f.name == "image" else f for f in POOL_SCHEMA_INLINE])
_SPLIT_CODES = {"pool": 1, "eval": 2, "train": 3}
_EPOCH = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


@dataclass(frozen=True)
class PoolStats:
    """What `write_pool` produced."""

    rows: int
    scenes: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class SplitStats:
    """What `write_labelled_split` produced."""

    images: int
    annotations: int
    annotations_path: Path


@dataclass(frozen=True)
class Benchmark:
    """Paths of a generated benchmark, as recorded in its manifest."""

    pool_dir: Path
    eval_dir: Path
    train_dir: Path | None


def scene_frames(
    config: SyntheticConfig, split: str, scene_index: int, bursts: bool, plan: ScenePlan | None = None
) -> list[Frame]:
    """All frames of one scene: a burst of near-duplicates, or a single frame.

    Its condition is drawn from the split's mix (`conditions`, or `eval_conditions` for the
    eval split), or is the `plan`'s, which then also sets the burst length.
    """
    rng = np.random.default_rng([config.seed, _SPLIT_CODES[split], scene_index])
    mix = config.eval_conditions if split == "eval" and config.eval_conditions is not None else config.conditions
    weights = None if mix is None else condition_weights(mix)
    scene = render_scene(rng, config.image_size, weights, plan.condition if plan else None)
    if plan is not None:
        in_burst, length = plan.frames > 1, plan.frames
    else:
        in_burst = bursts and rng.random() < config.burst_probability
        length = int(rng.integers(2, config.max_burst + 1)) if in_burst else 1
    return [render_frame(scene, rng, config.image_size, jitter=in_burst) for _ in range(length)]


def _render(config: SyntheticConfig, split: str, bursts: bool, job: tuple[int, ScenePlan | None]) -> list[Frame]:
    scene_index, plan = job
    return scene_frames(config, split, scene_index, bursts, plan)


def iter_frames(
    config: SyntheticConfig, split: str, n: int, bursts: bool, workers: int = 1
) -> Iterator[tuple[int, int, Frame]]:
    """Yield (scene index, frame index in burst, frame) until `n` frames.

    The pool under `ordering: runs` follows the plan of `schedule.plan_scenes`; every other
    split and ordering draws each scene's condition on its own. Scenes are rendered in
    bounded blocks (in `workers` processes when > 1), so memory stays flat however large
    `n` is (a plan is a few bytes per scene).
    """
    plans = plan_scenes(config, _SPLIT_CODES[split], n) if split == "pool" and config.ordering == "runs" else None
    render = partial(_render, config, split, bursts)
    block = 64 * max(workers, 1)
    produced, start = 0, 0
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as executor:
        mapper = executor.map if executor else map
        while produced < n:
            stop = start + block if plans is None else min(start + block, len(plans))
            jobs = [(i, None if plans is None else plans[i]) for i in range(start, stop)]
            for scene_index, frames in enumerate(mapper(render, jobs), start=start):
                for frame_index, frame in enumerate(frames[: n - produced]):
                    yield scene_index, frame_index, frame
                    produced += 1
                if produced >= n:
                    return
            start += block


def write_pool(
    config: SyntheticConfig,
    out_dir: Path,
    *,
    n: int | None = None,
    batch_rows: int = 512,
    rows_per_file: int = 20_000,
    workers: int = 1,
) -> PoolStats:
    """Stream `n` candidates (default: config.pool_size) into Parquet part files under `out_dir`.

    Files and rows follow capture time, as an exporter writes them: part files are numbered
    in order and each holds the next `rows_per_file` frames.
    """
    n = config.pool_size if n is None else n
    out_dir.mkdir(parents=True, exist_ok=True)
    inline = config.pool_image_mode == "inline"
    realistic = config.ordering == "runs"
    schema = POOL_SCHEMA_INLINE if inline else POOL_SCHEMA_URI
    image_dir = out_dir.with_name(out_dir.name + "-images")  # beside the pool: its dir holds Parquet only
    if not inline:
        image_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    writer: pq.ParquetWriter | None = None
    batch: dict[str, list] = {name: [] for name in schema.names}
    scenes = 0

    def flush() -> None:
        if batch["id"]:
            writer.write_batch(pa.record_batch(batch, schema=schema))
            for column in batch.values():
                column.clear()

    for row, (scene_index, frame_index, frame) in enumerate(
        iter_frames(config, "pool", n, bursts=True, workers=workers)
    ):
        if row % rows_per_file == 0:
            flush()
            if writer is not None:
                writer.close()
            files.append(out_dir / f"part-{len(files):05d}.parquet")
            writer = pq.ParquetWriter(files[-1], schema, compression="zstd")
        source = source_of(scene_index)
        # A realistic pool's ids name the camera and the scene, as frames off a line usually are:
        # they sort by line, not by capture time, so nothing downstream may take id order for pool order.
        candidate_id = f"{source}-s{scene_index:07d}-{frame_index}" if realistic else f"c{row:07d}"
        if inline:
            batch["image"].append(frame.jpeg)
        else:
            path = image_dir / f"{candidate_id}.jpg"
            path.write_bytes(frame.jpeg)
            batch["image_uri"].append(str(path.resolve()))
        batch["id"].append(candidate_id)
        batch["width"].append(frame.width)
        batch["height"].append(frame.height)
        batch["class_hint"].append(frame.class_hint)
        batch["condition"].append(frame.condition)
        batch["source"].append(source)
        batch["captured_at"].append(
            _EPOCH + timedelta(seconds=config.scene_interval_s * scene_index, milliseconds=120 * frame_index)
        )
        batch["scene_id"].append(f"s{scene_index:07d}")
        scenes = scene_index + 1
        if len(batch["id"]) >= batch_rows:
            flush()
    if writer is not None:
        flush()
        writer.close()
    return PoolStats(rows=n, scenes=scenes, files=tuple(files))


def write_labelled_split(config: SyntheticConfig, split: str, out_dir: Path, n: int, workers: int = 1) -> SplitStats:
    """Write `n` labelled images plus COCO `annotations.json` (with `condition` per image)."""
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (_, _, frame) in enumerate(iter_frames(config, split, n, bursts=False, workers=workers), start=1):
        file_name = f"{split}-{image_id:06d}.jpg"
        (image_dir / file_name).write_bytes(frame.jpeg)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": frame.width,
                "height": frame.height,
                "condition": frame.condition,
                "surface": frame.surface,
            }
        )
        for box in frame.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": DEFECT_CLASSES.index(box.category) + 1,
                    "bbox": [box.x, box.y, box.w, box.h],
                    "area": box.w * box.h,
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(DEFECT_CLASSES)],
    }
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(coco))
    return SplitStats(images=len(images), annotations=len(annotations), annotations_path=path)


def ensure_benchmark(config: SyntheticConfig, data_dir: Path, workers: int = 1) -> Benchmark:
    """Generate the benchmark under `data_dir` unless a manifest for this exact config is there."""
    manifest_path = data_dir / "benchmark.json"
    wanted = config.model_dump(mode="json")
    benchmark = Benchmark(data_dir / "pool", data_dir / "eval", data_dir / "train" if config.train_size else None)
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("config") == wanted:
        return benchmark
    manifest_path.unlink(missing_ok=True)
    for stale in (benchmark.pool_dir, data_dir / "pool-images", benchmark.eval_dir, data_dir / "train"):
        shutil.rmtree(stale, ignore_errors=True)
    pool = write_pool(config, benchmark.pool_dir, workers=workers)
    write_labelled_split(config, "eval", benchmark.eval_dir, config.eval_size, workers=workers)
    if benchmark.train_dir:
        write_labelled_split(config, "train", benchmark.train_dir, config.train_size, workers=workers)
    manifest = {
        "config": wanted,
        "pool_files": {p.name: file_digest(p) for p in pool.files},
        "pool_rows": pool.rows,
        "pool_scenes": pool.scenes,
        "paths": {k: str(v) for k, v in asdict(benchmark).items()},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return benchmark


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
