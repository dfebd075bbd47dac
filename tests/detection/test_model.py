"""The detector's build/checkpoint contract and the shared decoder agreeing with torchvision."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from tasks.config import DetectorConfig
from tasks.detection.model import DetectorError, build_detector, save_checkpoint
from tasks.detection.postprocess import PostprocessParams, anchors_for, decode_batch, level_sizes

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(DetectorConfig(), load_checkpoint=False).eval()


def test_anchors_match_torchvisions_generator(model):
    # given a 192-px batch, when torchvision generates FCOS anchors, then ours are identical
    images = torch.zeros(1, 3, 192, 192)
    features = list(model.backbone(images).values())
    expected = model.anchor_generator(ImageList(images, [(192, 192)]), features)[0]
    assert torch.equal(anchors_for(192), expected), "shared decoder's anchors differ from torchvision's"
    assert sum(level_sizes(192)) == expected.shape[0], "level sizes must add up to the anchor count"


def test_shared_decoder_matches_torchvision_postprocess(model):
    # given random head outputs, when both decoders run, then boxes, scores and labels agree
    generator = torch.Generator().manual_seed(1)
    n_anchors = anchors_for(192).shape[0]
    logits = torch.randn(2, n_anchors, 4, generator=generator) - 1.0
    regression = torch.rand(2, n_anchors, 4, generator=generator) * 4
    ctrness = torch.randn(2, n_anchors, 1, generator=generator)
    splits = level_sizes(192)
    head = {
        "cls_logits": list(logits.split(splits, dim=1)),
        "bbox_regression": list(regression.split(splits, dim=1)),
        "bbox_ctrness": list(ctrness.split(splits, dim=1)),
    }
    anchors = [list(anchors_for(192).split(splits))] * 2
    expected = model.postprocess_detections(head, anchors, [(192, 192)] * 2)
    ours = decode_batch(logits.numpy(), regression.numpy(), ctrness.numpy(), 192, PostprocessParams())
    for want, got in zip(expected, ours, strict=True):
        assert len(got.boxes) == len(want["boxes"]) > 0, "detection counts differ"
        np.testing.assert_allclose(got.boxes, want["boxes"].numpy(), atol=1e-4, err_msg="boxes differ")
        np.testing.assert_allclose(got.scores, want["scores"].numpy(), atol=1e-6, err_msg="scores differ")
        np.testing.assert_array_equal(got.labels, want["labels"].numpy(), err_msg="labels differ")


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(DetectorError, match="fcos_compact"):
        build_detector(DetectorConfig(architecture="yolo"), load_checkpoint=False)


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(DetectorError, match="tailcal train-detector"):
        build_detector(DetectorConfig(checkpoint=str(tmp_path / "absent.pt")))


def test_checkpoint_round_trip_keeps_outputs_close(model, tmp_path):
    # given a saved half-precision checkpoint, when it is loaded, then outputs match within fp16 error
    path = save_checkpoint(model, tmp_path / "m.pt")
    loaded = build_detector(DetectorConfig(checkpoint=str(path)))
    x = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = model.head(list(model.backbone(x).values()))["cls_logits"]
        b = loaded.head(list(loaded.backbone(x).values()))["cls_logits"]
    assert torch.allclose(a, b, atol=5e-2), f"max diff {float((a - b).abs().max())}"
    assert path.stat().st_size < 25 * 2**20, "checkpoint must stay under 25 MB"


def test_a_file_that_is_not_a_checkpoint_is_named_with_the_fix(tmp_path):
    # given a text file where a checkpoint should be
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not weights")
    # then building the detector names the file and what it should be, not a pickle traceback
    with pytest.raises(DetectorError, match=r"notes.pt is not a PyTorch state_dict .*point detector.checkpoint"):
        build_detector(DetectorConfig(checkpoint=str(bogus)))
