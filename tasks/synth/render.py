"""Render synthetic industrial-surface defect scenes, deterministically from a seed.

No library generates labelled defect imagery with capture conditions, so this is
hand-written: numpy for textures and photometric effects, PIL for shapes and JPEG.
A *scene* is the geometry (surface, defects, occluder, glare) drawn on a canvas a few
pixels larger than the frame; a *frame* is a jittered crop of it with the capture
condition applied and fresh sensor noise, so frames of one scene form a burst of
near-duplicates the way a production line camera produces them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SURFACES = ("brushed_metal", "woven_fabric", "painted_panel", "circuit_board")
DEFECT_CLASSES = ("scratch", "dent", "crack", "contamination")
# Long-tailed on purpose: most frames are normal, the hard conditions are rare.
CONDITION_WEIGHTS = {
    "normal": 0.58,
    "low_contrast": 0.10,
    "sensor_noise": 0.09,
    "motion_blur": 0.08,
    "low_light": 0.06,
    "overexposure": 0.05,
    "occlusion": 0.04,
}
CONDITIONS = tuple(CONDITION_WEIGHTS)
MARGIN = 2  # canvas border that frame jitter crops into
MIN_VISIBLE_FRACTION = 0.3  # an occluded defect below this is not labelled


@dataclass(frozen=True)
class Box:
    """A labelled defect, COCO-style [x, y, w, h] in frame pixels."""

    category: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Scene:
    """Geometry shared by every frame of a burst."""

    canvas: np.ndarray  # float32 HxWx3, 0..255, frame size + 2·MARGIN
    masks: tuple[tuple[str, np.ndarray], ...]  # per defect: class, visible mask on the canvas
    surface: str
    condition: str
    condition_strength: float


@dataclass(frozen=True)
class Frame:
    """One captured image with its labels."""

    jpeg: bytes
    boxes: tuple[Box, ...]
    surface: str
    condition: str
    width: int
    height: int

    @property
    def class_hint(self) -> str:
        """The class of the largest labelled defect, or "none"."""
        if not self.boxes:
            return "none"
        return max(self.boxes, key=lambda b: b.w * b.h).category


def render_scene(
    rng: np.random.Generator, size: int, weights: Sequence[float] | None = None, condition: str | None = None
) -> Scene:
    """Draw a surface, 0–4 defects and the condition's spatial parts (occluder, glare).

    The condition is drawn from `weights` (probabilities in `CONDITIONS` order; default
    `CONDITION_WEIGHTS`), or is `condition` when a plan gives it. The draw is made either way
    and uses one number whatever the weights, so the scene's geometry (surface, defects,
    shading) is the same for a seed under any mix or plan: two benchmarks of one seed differ
    in their conditions only.
    """
    side = size + 2 * MARGIN
    surface = SURFACES[rng.integers(len(SURFACES))]
    canvas = _SURFACE_PAINTERS[surface](rng, side)
    canvas *= _illumination(rng, side)[..., None]
    masks = []
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 2, 3, 4]))):
        category = DEFECT_CLASSES[rng.integers(len(DEFECT_CLASSES))]
        mask, color, alpha = _DEFECT_PAINTERS[category](rng, side, canvas)
        canvas = canvas * (1 - alpha * mask[..., None]) + color * (alpha * mask[..., None])
        masks.append((category, mask))
    drawn = str(rng.choice(CONDITIONS, p=list(CONDITION_WEIGHTS.values()) if weights is None else weights))
    condition = drawn if condition is None else condition
    strength = float(rng.uniform(0.0, 1.0))
    if condition == "occlusion":
        occluder = _occluder(rng, side)
        canvas = canvas * (1 - occluder[..., None]) + np.float32(45.0) * occluder[..., None]
        masks = [(c, m * (1 - occluder)) if _visible(m, occluder) else (c, None) for c, m in masks]
        masks = [(c, m) for c, m in masks if m is not None]
    if condition == "overexposure":
        canvas = canvas + _glare(rng, side)[..., None] * np.float32(255.0)
    return Scene(canvas.astype(np.float32), tuple(masks), surface, condition, strength)


def render_frame(scene: Scene, rng: np.random.Generator, size: int, jitter: bool) -> Frame:
    """Crop the scene (±1 px jitter in a burst), apply the capture condition, encode JPEG."""
    dx, dy = (int(v) + MARGIN for v in (rng.integers(-1, 2, size=2) if jitter else (0, 0)))
    crop = scene.canvas[dy : dy + size, dx : dx + size]
    drift = np.float32(1.0 + (rng.uniform(-0.03, 0.03) if jitter else 0.0))
    pixels = _apply_condition(crop * drift, scene.condition, scene.condition_strength, rng)
    boxes = tuple(b for b in (_box(c, m[dy : dy + size, dx : dx + size]) for c, m in scene.masks) if b)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return Frame(buffer.getvalue(), boxes, scene.surface, scene.condition, size, size)


def _illumination(rng: np.random.Generator, side: int) -> np.ndarray:
    """Light falloff plus uneven shading at every low frequency, as real surfaces have.

    The shading gives the 8×8 low-frequency DCT block that pHash thresholds real energy,
    so noise and ±1 px jitter rarely flip bits while distinct scenes differ by many.
    """
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    cx, cy = rng.uniform(-0.5, 0.5, size=2)
    spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(0.08, 0.2) ** 2))
    falloff = 0.75 + rng.uniform(0.3, 0.6) * ramp + rng.uniform(0.15, 0.35) * spot
    return (falloff * (1 + 0.3 * _smooth_noise(rng, side, 8))).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _brushed_metal(rng: np.random.Generator, side: int) -> np.ndarray:
    noise = rng.standard_normal((side, side + 48)).astype(np.float32)
    streaks = np.cumsum(noise, axis=1)
    streaks = (streaks[:, 48:] - streaks[:, :-48]) / np.sqrt(48)  # 1-D box blur along x
    gray = rng.uniform(120, 175) + 14 * streaks + 10 * _smooth_noise(rng, side, 4)
    tint = np.array([1.0, 1.0, rng.uniform(1.0, 1.08)], dtype=np.float32)
    return gray[..., None] * tint


def _woven_fabric(rng: np.random.Generator, side: int) -> np.ndarray:
    period = rng.uniform(5, 9)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    weave = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
    palette = np.array([[40, 50, 95], [190, 175, 140], [120, 120, 125], [95, 40, 45]], dtype=np.float32)
    base = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.15)
    shade = 1 + 0.18 * weave + 0.05 * rng.standard_normal((side, side)).astype(np.float32)
    return shade[..., None] * base


def _painted_panel(rng: np.random.Generator, side: int) -> np.ndarray:
    palette = np.array([[180, 30, 35], [30, 70, 160], [225, 225, 220], [230, 190, 40]], dtype=np.float32)
    base = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.1)
    peel = 1 + 0.04 * _smooth_noise(rng, side, side // 6) + 0.08 * _smooth_noise(rng, side, 3)
    return peel[..., None] * base


def _circuit_board(rng: np.random.Generator, side: int) -> np.ndarray:
    base = np.array([30, 95, 45], dtype=np.float32) * rng.uniform(0.8, 1.2)
    image = Image.new("RGB", (side, side), tuple(int(v) for v in base))
    draw = ImageDraw.Draw(image)
    copper = (184, 125, 60)
    for _ in range(rng.integers(6, 14)):
        a, b = sorted(rng.integers(0, side, size=2))
        c = int(rng.integers(0, side))
        width = int(rng.integers(2, 4))
        draw.line([(a, c), (b, c)] if rng.random() < 0.5 else [(c, a), (c, b)], fill=copper, width=width)
    for _ in range(rng.integers(4, 10)):
        x, y = rng.integers(0, side - 8, size=2)
        s = int(rng.integers(4, 9))
        draw.rectangle([int(x), int(y), int(x) + s, int(y) + s], fill=(200, 200, 190))
    return np.asarray(image, dtype=np.float32) + 4 * rng.standard_normal((side, side, 1)).astype(np.float32)


_SURFACE_PAINTERS = {
    "brushed_metal": _brushed_metal,
    "woven_fabric": _woven_fabric,
    "painted_panel": _painted_panel,
    "circuit_board": _circuit_board,
}


def _mask_from(draw_fn, side: int, blur: float = 0.8) -> np.ndarray:
    image = Image.new("L", (side, side), 0)
    draw_fn(ImageDraw.Draw(image))
    image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image, dtype=np.float32) / 255.0


def _anchor(rng: np.random.Generator, side: int, extent: int) -> np.ndarray:
    return rng.uniform(MARGIN + extent, side - MARGIN - extent, size=2)


def _local_mean(canvas: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None]
    return (canvas * weights).sum(axis=(0, 1)) / max(float(weights.sum()), 1e-6)


def _scratch(rng, side, canvas):
    length = rng.uniform(25, 70)
    angle = rng.uniform(0, np.pi)
    cx, cy = _anchor(rng, side, int(length / 2) + 2)
    d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
    width = int(rng.integers(2, 4))
    mask = _mask_from(lambda g: g.line([(cx - d[0], cy - d[1]), (cx + d[0], cy + d[1])], fill=255, width=width), side)
    bright = rng.random() < 0.5
    return mask, np.float32(235.0 if bright else 25.0), 0.85


def _dent(rng, side, canvas):
    rx, ry = rng.uniform(5, 13, size=2)
    cx, cy = _anchor(rng, side, 14)
    mask = _mask_from(lambda g: g.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255), side, blur=2.0)
    return mask, _local_mean(canvas, mask) * np.float32(0.35), 0.9


def _crack(rng, side, canvas):
    steps = int(rng.integers(6, 12))
    start = _anchor(rng, side, 40)
    heading = rng.uniform(0, 2 * np.pi)
    points = [tuple(start)]
    for _ in range(steps):
        heading += rng.uniform(-0.7, 0.7)
        x, y = points[-1]
        step = rng.uniform(4, 8)
        nxt = (x + step * np.cos(heading), y + step * np.sin(heading))
        points.append(tuple(np.clip(nxt, MARGIN, side - MARGIN - 1)))
    width = int(rng.integers(2, 4))
    mask = _mask_from(lambda g: g.line(points, fill=255, width=width, joint="curve"), side, blur=0.6)
    return mask, np.float32(15.0), 0.9


def _contamination(rng, side, canvas):
    cx, cy = _anchor(rng, side, 18)
    blobs = [(cx + rng.normal(0, 6), cy + rng.normal(0, 6), rng.uniform(2, 6)) for _ in range(rng.integers(3, 9))]

    def draw(g):
        for x, y, r in blobs:
            g.ellipse([x - r, y - r, x + r, y + r], fill=255)

    palette = np.array([[120, 80, 30], [200, 170, 60], [60, 60, 50]], dtype=np.float32)
    return _mask_from(draw, side, blur=1.2), palette[rng.integers(len(palette))], 0.75


_DEFECT_PAINTERS = {
    "scratch": _scratch,
    "dent": _dent,
    "crack": _crack,
    "contamination": _contamination,
}


def _occluder(rng: np.random.Generator, side: int) -> np.ndarray:
    """A gripper bar or fixture covering 15–35 % of the frame."""
    horizontal = rng.random() < 0.5
    thickness = int(side * rng.uniform(0.15, 0.35))
    start = int(rng.integers(0, side - thickness))
    mask = np.zeros((side, side), dtype=np.float32)
    if horizontal:
        mask[start : start + thickness, :] = 1.0
    else:
        mask[:, start : start + thickness] = 1.0
    return mask


def _visible(mask: np.ndarray, occluder: np.ndarray) -> bool:
    total = float(mask.sum())
    return total > 0 and float((mask * (1 - occluder)).sum()) / total >= MIN_VISIBLE_FRACTION


def _glare(rng: np.random.Generator, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    cx, cy = rng.uniform(0, side, size=2)
    radius = rng.uniform(0.12, 0.3) * side
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)).astype(np.float32)


def _apply_condition(pixels: np.ndarray, condition: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    noise_sigma = 2.0
    if condition == "low_light":
        pixels = pixels * np.float32(0.28 - 0.14 * strength)
        noise_sigma = 5.0
    elif condition == "overexposure":
        pixels = pixels * np.float32(1.5 + 0.6 * strength) + np.float32(30.0)
    elif condition == "low_contrast":
        mean = pixels.mean(axis=(0, 1), keepdims=True)
        pixels = mean + (pixels - mean) * np.float32(0.35 - 0.2 * strength)
    elif condition == "motion_blur":
        pixels = _motion_blur(pixels, length=int(7 + 10 * strength))
    elif condition == "sensor_noise":
        noise_sigma = 16.0 + 16.0 * strength
    pixels = pixels + rng.normal(0.0, noise_sigma, size=(*pixels.shape[:2], 1)).astype(np.float32)
    if condition == "sensor_noise":
        salt = rng.random(pixels.shape[:2]) < 0.01
        pixels[salt] = rng.choice([0.0, 255.0], size=(int(salt.sum()), 1))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _motion_blur(pixels: np.ndarray, length: int) -> np.ndarray:
    """Horizontal box blur of `length` px (camera pan along the line), edges replicated."""
    pad = length // 2
    padded = np.pad(pixels, ((0, 0), (pad + 1, length - pad), (0, 0)), mode="edge")
    summed = np.cumsum(padded, axis=1, dtype=np.float32)
    width = pixels.shape[1]
    return (summed[:, length : length + width] - summed[:, :width]) / np.float32(length)


def _box(category: str, mask: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(mask > 0.25)
    if len(xs) < 6:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return Box(category, float(x0), float(y0), float(x1 - x0), float(y1 - y0))
