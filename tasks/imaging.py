"""One way to turn image bytes into pixels, used by every stage, and one way to put them on the wire.

The pHash of the score cache, the image the VLM sees, the detector's input (evaluation,
calibration, activation profiles, serving) and the drift statistics all start from
`load_image`: the picture upright (EXIF orientation applied), in sRGB, 8 bits per channel,
alpha composited. A frame that differs between two stages would be scored as one picture
and quantized as another.

Pillow does the decoding, orientation (`ImageOps.exif_transpose`) and colour management
(`ImageCms`); what is written here is only the choice of each step, which no library makes
for us: how a 16-bit or float frame becomes 8-bit, and what a transparent pixel becomes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Transparent pixels are composited on white: what a viewer (and a VLM) shows for them.
BACKGROUND = (255, 255, 255)
_ORIENTATION_TAG = 0x0112
_BITS_PER_SAMPLE_TAG = 258  # TIFF
# What VLM APIs accept (OpenAI, Anthropic, Gemini): anything else is re-encoded.
WIRE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
WIRE_JPEG_QUALITY = 90
# Float frames are 0–1; rounding in their writers may overshoot by a hair.
FLOAT_TOLERANCE = 1e-3
_SRGB = ImageCms.createProfile("sRGB")


class ImageDecodeError(ValueError):
    """The bytes do not hold an image Pillow can turn into 8-bit RGB; the message says why."""


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 6 = stored sideways, shown turned 90° clockwise)."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except (ValueError, TypeError, SyntaxError):  # a broken EXIF block: show the pixels as stored
        return 1


def load_image(data: bytes, draft: tuple[int, int] | None = None, grey: bool = False) -> Image.Image:
    """Encoded bytes → the upright 8-bit sRGB picture (mode "RGB"; "L" with `grey`).

    `draft` lets a JPEG decode at a reduced scale no smaller than that size, and `grey` asks
    for its luma only: the pHash needs no more than a 32 × 32 grey thumbnail. Raises
    ImageDecodeError.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if draft is not None:
            image.draft("L" if grey else image.mode, draft)
        image.load()
        icc, bits = image.info.get("icc_profile"), _bits(image)
        # Pillow knows each container's orientation rules (TIFF applies its own on open).
        picture = to_rgb(ImageOps.exif_transpose(image) or image, icc, bits)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not an image Pillow can read (an unknown format, or a variant such as HEIC, float RGB or packed "
            "12-bit RGB TIFF): convert it to PNG or JPEG"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    return picture.convert("L") if grey else picture


def decode_rgb(data: bytes | np.ndarray) -> np.ndarray:
    """Encoded bytes (or an array already decoded) → uint8 RGB [H, W, 3], upright."""
    if isinstance(data, np.ndarray):
        if data.ndim == 2:
            return np.repeat(data[..., None], 3, axis=2)
        return data
    return np.asarray(load_image(data))


def _bits(image: Image.Image) -> int | None:
    """The real bit depth of a high-bit-depth grey frame, when its container says (TIFF)."""
    tags = getattr(image, "tag_v2", None)
    if tags is not None and _BITS_PER_SAMPLE_TAG in tags:
        value = tags[_BITS_PER_SAMPLE_TAG]
        return int(value[0] if isinstance(value, tuple) else value)
    return None


def to_rgb(image: Image.Image, icc_profile: bytes | None = None, bits: int | None = None) -> Image.Image:
    """Any Pillow mode → 8-bit RGB.

    - 16/32-bit integer grey ("I;16*", "I") is scaled by its real bit depth (TIFF BitsPerSample,
      else 16 bits), not clipped at 255 as `convert("RGB")` would.
    - Float grey ("F") is read as [0, 1] and scaled by 255; a frame with values outside it
      is refused (ImageDecodeError), not guessed at: one stray pixel must not decide the scale.
    - Alpha ("RGBA", "LA", "PA", palette transparency) is composited on `BACKGROUND`.
    - An embedded ICC profile (CMYK included) is converted to sRGB.
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = _grey_to_8bit(np.asarray(image), mode, bits)
    elif mode in ("1", "P") and "transparency" not in image.info:
        image = image.convert("RGB")
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        canvas = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    if icc_profile and image.mode in ("RGB", "CMYK", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            image = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB") or image
        except (ImageCms.PyCMSError, OSError):
            pass  # an unreadable or mismatched profile: Pillow's plain conversion below is the best left
    return image if image.mode == "RGB" else image.convert("RGB")


def _grey_to_8bit(values: np.ndarray, mode: str, bits: int | None) -> Image.Image:
    if mode == "F":
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE or finite.size < values.size:
            raise ImageDecodeError(
                f"a float frame with values in [{low:.4g}, {high:.4g}]"
                f"{' and NaN/inf pixels' if finite.size < values.size else ''}: tailcal reads float frames "
                "as 0–1; convert it to an 8- or 16-bit PNG or TIFF"
            )
        scaled = values * 255.0
    else:
        depth = bits if bits and 8 < bits <= 32 else 16
        scaled = values.astype(np.float64) * (255.0 / (2**depth - 1))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


@dataclass(frozen=True)
class WireImage:
    """An image as it goes to the gateway: the bytes, their media type, and the size they show."""

    data: bytes
    media_type: str
    width: int
    height: int


def for_the_wire(data: bytes, max_side: int) -> WireImage:
    """The bytes a VLM gets: the same upright sRGB picture every stage sees, no larger than `max_side`.

    The original bytes go out unchanged only when they already are that picture: a
    single-frame JPEG, PNG or WebP in 8-bit RGB or grey without transparency, upright as
    stored, with no colour profile, within `max_side`. Anything else (rotated, other formats,
    other modes, larger) is re-encoded as JPEG (quality 90) from `load_image`'s picture. The
    media type always matches the bytes.
    """
    try:
        probe = Image.open(io.BytesIO(data))
        as_is = (
            probe.format in WIRE_FORMATS
            and probe.mode in ("RGB", "L")
            and getattr(probe, "n_frames", 1) == 1  # an animation would show the VLM more than frame 0
            and "transparency" not in probe.info  # others see it composited on white
            and orientation(probe) == 1
            and not probe.info.get("icc_profile")
            and max(probe.size) <= max_side
        )
    except UnidentifiedImageError:
        as_is = False  # load_image names the problem
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    if as_is:
        return WireImage(data, WIRE_FORMATS[probe.format], probe.width, probe.height)
    image = load_image(data)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=WIRE_JPEG_QUALITY)
    return WireImage(buffer.getvalue(), WIRE_FORMATS["JPEG"], image.width, image.height)
