"""One image path: every stage sees the same upright 8-bit sRGB picture, and the gateway gets
bytes whose media type matches them."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from tasks.detection.preprocess import Preprocessing
from tasks.drift import image_features
from tasks.imaging import WIRE_FORMATS, ImageDecodeError, decode_rgb, for_the_wire, load_image
from tasks.ingest.images import check_image
from tasks.scoring.cache import phash64
from tasks.scoring.gateway import prepare_image

pytestmark = pytest.mark.unit


def _scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A frame with structure at several scales (gradients, blocks, noise), so pHash has something to see."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = 0.5 + 0.3 * np.sin(xs / width * 7) * np.cos(ys / height * 5)
    blocks = (rng.random((8, 6)) > 0.5).repeat(-(-height // 8), 0)[:height].repeat(-(-width // 6), 1)[:, :width]
    grey = np.clip(base + 0.25 * blocks + rng.normal(0, 0.02, (height, width)), 0, 1)
    return (np.stack([grey, grey * 0.9, grey * 0.8], axis=2) * 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _sideways_portrait() -> tuple[bytes, bytes]:
    """(upright 768×1024 JPEG, the same photo stored sideways with EXIF Orientation=6)."""
    upright = Image.fromarray(_scene(768, 1024))
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90° clockwise to show it upright
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 1024 wide × 768 tall on disk
    return _encode(upright, "JPEG", quality=95), _encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def test_a_sideways_stored_portrait_is_upright_in_every_stage():
    upright, sideways = _sideways_portrait()
    # the VLM gets an upright 384×512 copy, declared as what it is
    sent = prepare_image(sideways, max_side=512)
    assert (sent.width, sent.height) == (384, 512), f"sent {sent.width}×{sent.height}, expected upright 384×512"
    assert sent.data_uri.startswith("data:image/jpeg;base64,"), sent.data_uri[:40]
    # the cache sees the same picture as the upright copy
    distance = bin(phash64(sideways) ^ phash64(upright)).count("1")
    assert distance <= 5, f"pHash {distance} bits from the upright copy (near-duplicates are within 5)"
    # the detector gets 1024 rows × 768 columns, the upright pixels
    pixels = decode_rgb(sideways)
    assert pixels.shape == (1024, 768, 3), f"detector input {pixels.shape}"
    assert np.abs(pixels.astype(int) - decode_rgb(upright).astype(int)).mean() < 3, "same pixels as the upright copy"
    # ingest records the size as shown
    check = check_image(sideways, max_pixels=10**8)
    assert (check.width, check.height) == (768, 1024), f"ingest recorded {check.width}×{check.height}"
    # drift measures the upright picture too
    assert image_features(pixels) == pytest.approx(image_features(decode_rgb(upright)), abs=0.02), "drift features"


def test_a_small_copy_is_upright_as_well():
    # A frame within max_side is not resized, but still must not go out sideways.
    upright = Image.fromarray(_scene(240, 320))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = _encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())
    sent = for_the_wire(sideways, max_side=512)
    assert (sent.width, sent.height) == (240, 320), f"sent {sent.width}×{sent.height}, expected upright 240×320"
    shown = Image.open(io.BytesIO(sent.data))
    assert shown.size == (240, 320) and shown.getexif().get(0x0112, 1) == 1, "upright pixels, no tag left to apply"


@pytest.mark.parametrize(
    ("fmt", "wire_type", "unchanged"),
    [
        ("PNG", "image/png", True),
        ("WEBP", "image/webp", True),
        ("BMP", "image/jpeg", False),
        ("TIFF", "image/jpeg", False),
    ],
)
def test_the_declared_media_type_always_matches_the_bytes(fmt, wire_type, unchanged):
    # given a 320×240 frame in a format other than JPEG
    data = _encode(Image.fromarray(_scene(320, 240)), fmt)
    # when prepared for the gateway
    sent = prepare_image(data, max_side=512)
    # then the data URI declares the format its bytes hold, and only formats VLM APIs take go out
    declared = sent.data_uri.split(";", 1)[0].removeprefix("data:")
    payload = __import__("base64").b64decode(sent.data_uri.split(",", 1)[1])
    actual = Image.open(io.BytesIO(payload)).format
    assert declared == wire_type and WIRE_FORMATS[actual] == declared, f"{fmt}: declared {declared}, bytes {actual}"
    assert (payload == data) is unchanged, f"{fmt}: sent {'re-encoded' if unchanged else 'as is'} unexpectedly"
    assert (sent.width, sent.height) == (320, 240), f"{fmt}: size {sent.width}×{sent.height}"


def test_16_bit_grey_is_scaled_by_its_bit_depth_not_clipped():
    grey8 = _scene(64, 48)[..., 0]
    data = _encode(Image.fromarray(grey8.astype(np.uint16) * 257), "PNG")  # the same picture in 16 bits
    picture = np.asarray(load_image(data))
    assert picture.dtype == np.uint8 and picture.shape == (48, 64, 3), picture.shape
    assert np.abs(picture[..., 0].astype(int) - grey8).max() <= 1, "16-bit values map back to the 8-bit picture"


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    picture = np.asarray(load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert tuple(picture[0, 0]) == (200, 0, 0), f"opaque pixel kept: {picture[0, 0]}"
    assert tuple(picture[9, 9]) == (255, 255, 255), f"transparent pixel on white: {picture[9, 9]}"


def test_cmyk_palette_float_and_one_bit_frames_become_the_same_rgb_picture():
    scene = _scene(64, 48)
    reference = scene.astype(int)
    cases = {
        "CMYK JPEG": _encode(Image.fromarray(scene).convert("CMYK"), "JPEG", quality=95),
        "palette PNG": _encode(Image.fromarray(scene).quantize(256), "PNG"),
        "float TIFF": _encode(Image.fromarray(scene[..., 0].astype(np.float32) / 255), "TIFF"),
        "1-bit PNG": _encode(Image.fromarray(scene).convert("1"), "PNG"),
    }
    for name, data in cases.items():
        picture = np.asarray(load_image(data)).astype(int)
        assert picture.shape == (48, 64, 3), f"{name}: {picture.shape}"
        wanted = reference if name != "float TIFF" else np.repeat(reference[..., :1], 3, axis=2)
        error = np.abs(picture - wanted).mean()
        limit = 130 if name == "1-bit PNG" else 12  # one bit per pixel keeps only light vs dark
        assert error < limit, f"{name}: mean error {error:.1f} from the picture"
        assert for_the_wire(data, 512).media_type in WIRE_FORMATS.values(), f"{name}: a type VLM APIs take"


def test_an_embedded_colour_profile_is_converted_to_srgb():
    # given the same pixels tagged with an sRGB and with a (very different) LAB-derived profile
    scene = Image.fromarray(_scene(32, 24))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = load_image(_encode(scene, "PNG", icc_profile=srgb))
    assert np.abs(np.asarray(tagged).astype(int) - np.asarray(scene).astype(int)).max() <= 2, "sRGB stays sRGB"
    assert for_the_wire(_encode(scene, "PNG", icc_profile=srgb), 512).media_type == "image/jpeg", (
        "a profiled image is re-encoded from the converted picture, not sent with a profile the VLM may ignore"
    )


def test_the_detector_input_is_the_same_picture_for_every_container():
    # The same frame as JPEG-decoded pixels, a PNG and an EXIF-rotated JPEG: one detector input.
    prep = Preprocessing(192)
    upright, sideways = _sideways_portrait()
    a, _ = prep.batch([decode_rgb(upright)])
    b, _ = prep.batch([decode_rgb(sideways)])
    assert np.abs(a - b).mean() < 0.05, "EXIF-rotated and upright copies reach the detector alike"


def test_a_float_frame_outside_zero_to_one_is_refused_not_guessed():
    grey = _scene(32, 24)[..., 0].astype(np.float32) / 255
    fine = load_image(_encode(Image.fromarray(grey), "TIFF"))
    assert np.abs(np.asarray(fine)[..., 0].astype(int) - _scene(32, 24)[..., 0]).max() <= 1, "0–1 floats scale by 255"
    stray = grey.copy()
    stray[0, 0] = 1.01  # one pixel over must not turn the frame black (it did, by switching the scale)
    with pytest.raises(ImageDecodeError, match=r"float frame with values in \[.*, 1.01\].*convert it"):
        load_image(_encode(Image.fromarray(stray), "TIFF"))
    assert "float frame" in (check_image(_encode(Image.fromarray(grey * 4095), "TIFF"), 10**8).error or ""), (
        "ingest skips such a frame with the reason"
    )


@pytest.mark.parametrize("kind", ["animated GIF", "grey PNG with tRNS"])
def test_animations_and_transparency_go_to_the_vlm_as_every_stage_sees_them(kind):
    if kind == "animated GIF":
        frames = [Image.fromarray(_scene(40, 30, seed)) for seed in range(3)]
        buffer = io.BytesIO()
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
        data = buffer.getvalue()
    else:
        data = _encode(Image.fromarray(_scene(40, 30)[..., 0]), "PNG", transparency=90)
    sent = for_the_wire(data, 512)
    assert sent.data != data and sent.media_type == "image/jpeg", f"{kind}: re-encoded from the decoded picture"
    shown = np.asarray(Image.open(io.BytesIO(sent.data)).convert("RGB")).astype(int)
    assert np.abs(shown - np.asarray(load_image(data)).astype(int)).mean() < 4, (
        f"{kind}: the VLM sees frame 0 as composited"
    )


def test_a_tiff_stored_sideways_is_measured_upright_by_ingest_and_the_wire():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(_scene(160, 96)), "TIFF", exif=exif.tobytes())
    shown = load_image(data).size
    check = check_image(data, 10**8)
    assert (check.width, check.height) == shown, f"ingest {check.width}×{check.height} vs decoded {shown}"
    wire = for_the_wire(data, 512)
    assert (wire.width, wire.height) == shown, f"wire {wire.width}×{wire.height} vs decoded {shown}"
