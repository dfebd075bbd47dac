"""Check that bytes are a decodable image of sane size, decoding no more than needed."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from tasks.imaging import oriented_size

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
            if image.size[0] * image.size[1] > max_pixels:
                return ImageCheck(error=_bomb(*image.size, max_pixels))
            width, height = oriented_size(image)  # as shown: a sideways-stored portrait is tall
            # JPEG can decode at 1/8 scale: every entropy-coded byte is still read, so a
            # truncated or corrupt stream still fails, at a fraction of the IDCT cost.
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except Image.DecompressionBombError as exc:
        return ImageCheck(error=f"{_BOMB}: {exc}")
    except UnidentifiedImageError:
        return ImageCheck(error="not an image: no known image format in the bytes")
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow raises OSError for truncated data and SyntaxError/ValueError for broken headers.
        return ImageCheck(error=f"corrupt or truncated image: {exc}")
    return ImageCheck(width=width, height=height)


def _bomb(width: int, height: int, max_pixels: int) -> str:
    return (
        f"{_BOMB}: image header claims {width}×{height} = {width * height} pixels, over "
        f"pool.max_image_pixels={max_pixels}; raise it if such images are real"
    )
