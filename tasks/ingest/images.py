"""Check that bytes are a decodable image of sane size, decoding no more than needed."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from tasks.imaging import ImageDecodeError, load_image

# Every bomb rejection starts with this, whether our limit or Pillow's own
# (Image.MAX_IMAGE_PIXELS, checked inside Image.open) caught it.
_BOMB = "decompression bomb guard"


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """Outcome of validating one image: its size as shown (after EXIF orientation), or why it was rejected."""

    width: int = 0
    height: int = 0
    error: str | None = None


def check_image(data: bytes, max_pixels: int) -> ImageCheck:
    """Validate encoded image bytes without keeping the decoded pixels.

    The header's size is checked before any pixel is decoded, so a small file that claims
    20000×20000 is rejected without allocating gigabytes (a decompression bomb).
    """
    if not data:
        return ImageCheck(error="empty object (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        return ImageCheck(error=f"{_BOMB}: {exc}")
    except UnidentifiedImageError:
        return ImageCheck(error="not an image: no known image format in the bytes")
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow raises OSError for truncated data and SyntaxError/ValueError for broken headers.
        return ImageCheck(error=f"corrupt or truncated image: {exc}")
    if width * height > max_pixels:
        return ImageCheck(error=_bomb(width, height, max_pixels))
    try:
        # The decode every stage will make, at up to 1/8 scale for JPEG: every entropy-coded
        # byte is still read, so a truncated or corrupt stream still fails, for a fraction of
        # the IDCT cost. Its orientation says whether the picture is shown sideways.
        picture = load_image(data, draft=(max(1, width // 8), max(1, height // 8)))
    except (ImageDecodeError, Image.DecompressionBombError) as exc:
        return ImageCheck(error=str(exc))
    if (picture.width > picture.height) != (width > height) and width != height:
        width, height = height, width  # as shown: a sideways-stored portrait is tall
    return ImageCheck(width=width, height=height)


def _bomb(width: int, height: int, max_pixels: int) -> str:
    return (
        f"{_BOMB}: image header claims {width}×{height} = {width * height} pixels, over "
        f"pool.max_image_pixels={max_pixels}; raise it if such images are real"
    )
