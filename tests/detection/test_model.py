"""The detector's build and checkpoint contract."""

import pytest
import torch

from tasks.config import DetectorConfig
from tasks.detection.adapter import DetectorError
from tasks.detection.families import build_detector
from tasks.detection.model import save_checkpoint

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(DetectorConfig(), load_checkpoint=False).eval()


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
