"""The synthetic defect benchmark: deterministic, documented schema, full coverage, real bursts."""

import io
import itertools
import json
from collections import defaultdict

import imagehash
import numpy as np
import pyarrow.dataset as ds
import pytest
from faster_coco_eval import COCO
from PIL import Image

from tasks.config import SyntheticConfig
from tasks.synth.render import CONDITIONS, DEFECT_CLASSES
from tasks.synth.write import ensure_benchmark, file_digest, write_labelled_split, write_pool

pytestmark = pytest.mark.unit

CONFIG = SyntheticConfig(seed=7, pool_size=600, eval_size=120)
NEAR_DUP_BITS = 5  # floor(64 · (1 − 0.92)), the cache's default threshold


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    write_pool(CONFIG, out, batch_rows=128, rows_per_file=250)
    return out


@pytest.fixture(scope="module")
def pool_table(pool_dir):
    return ds.dataset(pool_dir, format="parquet").to_table()


def test_same_seed_gives_byte_identical_parquet(pool_dir, tmp_path):
    again = tmp_path / "again"
    write_pool(CONFIG, again, batch_rows=128, rows_per_file=250)
    first = sorted(pool_dir.glob("*.parquet"))
    second = sorted(again.glob("*.parquet"))
    assert len(first) == 3, "600 rows at 250 rows per file make 3 part files"
    assert [file_digest(p) for p in first] == [file_digest(p) for p in second], "same seed → same Parquet bytes"


def test_other_seed_gives_other_images(pool_table, tmp_path):
    write_pool(SyntheticConfig(seed=8), tmp_path, n=20)
    other = ds.dataset(tmp_path, format="parquet").to_table()
    assert other.column("image").to_pylist() != pool_table.column("image").to_pylist()[:20], "seed changes data"


def test_parallel_rendering_matches_serial(tmp_path):
    write_pool(CONFIG, tmp_path / "serial", n=150)
    write_pool(CONFIG, tmp_path / "parallel", n=150, workers=2)
    serial = file_digest(tmp_path / "serial" / "part-00000.parquet")
    assert serial == file_digest(tmp_path / "parallel" / "part-00000.parquet"), "workers must not change output"


def test_pool_has_the_documented_schema(pool_table):
    expected = ["id", "image", "width", "height", "class_hint", "condition", "source", "captured_at", "scene_id"]
    assert pool_table.schema.names == expected, f"pool columns: {pool_table.schema.names}"
    ids = pool_table.column("id").to_pylist()
    assert len(ids) == 600 and len(set(ids)) == 600, "exactly pool_size rows with unique ids"
    image = Image.open(io.BytesIO(pool_table.column("image")[0].as_py()))
    assert image.format == "JPEG" and image.size == (192, 192), "inline images are 192 px JPEG bytes"
    assert set(pool_table.column("class_hint").to_pylist()) <= {*DEFECT_CLASSES, "none"}, "class_hint values"
    times = pool_table.column("captured_at").to_pylist()
    assert times == sorted(times), "captured_at increases along the stream"


def test_uri_mode_writes_image_files(tmp_path):
    write_pool(SyntheticConfig(seed=1, pool_image_mode="uri"), tmp_path / "pool", n=12)
    table = ds.dataset(tmp_path / "pool", format="parquet").to_table()
    assert "image" not in table.schema.names and "image_uri" in table.schema.names, "uri mode has image_uri"
    for uri in table.column("image_uri").to_pylist():
        assert Image.open(uri).size == (192, 192), f"{uri} should be a readable image"
        assert uri.startswith(str(tmp_path / "pool-images")), f"{uri} lies beside the pool, not inside it"


def test_pool_covers_every_condition_with_a_long_tail(pool_table):
    counts = defaultdict(int)
    for condition in pool_table.column("condition").to_pylist():
        counts[condition] += 1
    assert set(counts) == set(CONDITIONS), f"every condition appears: {dict(counts)}"
    assert counts["normal"] > 0.4 * 600, f"normal dominates: {dict(counts)}"
    rare = min(counts.values())
    assert rare < 0.08 * 600, f"the rarest condition is a tail, not a bulk: {dict(counts)}"


def test_eval_split_is_coco_with_every_class_and_condition(tmp_path):
    stats = write_labelled_split(CONFIG, "eval", tmp_path, n=CONFIG.eval_size)
    coco = COCO(str(stats.annotations_path))
    assert len(coco.getImgIds()) == CONFIG.eval_size, "one COCO image per frame"
    names = {c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert names == set(DEFECT_CLASSES), f"categories: {names}"
    used = {coco.loadCats(a["category_id"])[0]["name"] for a in coco.dataset["annotations"]}
    assert used == set(DEFECT_CLASSES), f"every class is labelled somewhere: {used}"
    conditions = {img["condition"] for img in coco.dataset["images"]}
    assert conditions == set(CONDITIONS), f"every condition is in eval: {conditions}"
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 192 and y + h <= 192, f"box inside the image: {ann}"
        assert w >= 2 and h >= 2, f"boxes are at least 2 px: {ann}"
    first = coco.dataset["images"][0]
    assert Image.open(tmp_path / "images" / first["file_name"]).size == (192, 192), "image file exists"


def _phash(image_bytes: bytes) -> imagehash.ImageHash:
    return imagehash.phash(Image.open(io.BytesIO(image_bytes)))


def test_bursts_are_near_duplicates_and_scenes_are_not(pool_table):
    by_scene = defaultdict(list)
    for scene, image in zip(
        pool_table.column("scene_id").to_pylist(), pool_table.column("image").to_pylist(), strict=True
    ):
        by_scene[scene].append(_phash(image))
    # Cache semantics: the burst's first frame is stored, later frames look it up.
    burst_distances = [h - hashes[0] for hashes in by_scene.values() for h in hashes[1:]]
    within = np.mean(np.array(burst_distances) <= NEAR_DUP_BITS)
    assert len(burst_distances) > 100, "the pool has real bursts"
    assert within >= 0.95, f"only {within:.1%} of burst frames are within {NEAR_DUP_BITS} bits of their first"
    firsts = [hashes[0] for hashes in by_scene.values()]
    collisions = sum(a - b <= NEAR_DUP_BITS for a, b in itertools.combinations(firsts, 2))
    assert collisions == 0, f"{collisions} distinct-scene pairs look like near-duplicates"


def test_ensure_benchmark_is_idempotent_and_regenerates_on_change(tmp_path):
    small = SyntheticConfig(seed=3, pool_size=30, eval_size=10)
    ensure_benchmark(small, tmp_path)
    manifest = json.loads((tmp_path / "benchmark.json").read_text())
    stamp = (tmp_path / "pool" / "part-00000.parquet").stat().st_mtime_ns
    ensure_benchmark(small, tmp_path)
    assert (tmp_path / "pool" / "part-00000.parquet").stat().st_mtime_ns == stamp, "same config → no rewrite"
    ensure_benchmark(small.model_copy(update={"pool_size": 40}), tmp_path)
    rows = ds.dataset(tmp_path / "pool", format="parquet").count_rows()
    assert rows == 40 and manifest["pool_rows"] == 30, "a changed config regenerates the pool"


def test_the_smallest_frame_the_config_allows_renders_every_defect():
    # given the smallest image_size the config takes, when many scenes are drawn, then each renders (a crack
    # drawn up to 40 px from its start needed 84 px of canvas; 64 passed the config and crashed the generator)
    from pydantic import ValidationError

    from tasks.synth.render import render_scene

    smallest = SyntheticConfig.model_fields["image_size"].metadata[0].ge
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, smallest) for _ in range(300)]
    drawn = {category for scene in scenes for category, _ in scene.masks}
    assert drawn == set(DEFECT_CLASSES), f"every defect drawn at {smallest} px: {drawn}"
    with pytest.raises(ValidationError, match="image_size"):
        SyntheticConfig(image_size=smallest - 1)
