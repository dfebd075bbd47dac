"""`tailcal train-detector --architecture <family>` trains a torchvision family, not only the demo's
own: a few seconds on a tiny generated split, and the checkpoint it writes loads and exports."""

import json
import math

import pytest

from flows.cli import main
from tasks.config import DetectorConfig
from tasks.detection.export import ensure_fp16_ir
from tasks.detection.families import build_detector
from tasks.detection.runtime import detect, load_detector
from tasks.evaluation.split import load_eval_split

pytestmark = pytest.mark.integration

# Two-stage and with a background logit: the family whose labels are shifted in training and
# whose IR decodes with RoI heads read back from the checkpoint.
FAMILY = "fasterrcnn_mobilenet_v3_large_fpn"
SIZE = 128


def test_train_detector_trains_a_torchvision_family_whose_checkpoint_loads_and_exports(tmp_path):
    # when a torchvision family trains for three seconds on six generated frames
    out = tmp_path / "detector.pt"
    command = ["train-detector", "--architecture", FAMILY, "--input-size", str(SIZE), "--minutes", "0.05"]
    command += ["--out", str(out), "--train-dir", str(tmp_path / "train"), "--eval-dir", str(tmp_path / "eval")]
    command += ["--train-images", "6", "--eval-images", "3", "--batch-size", "2", "--workers", "1"]
    code = main(command)
    # then it took optimizer steps, saved the weights and scored them on the eval split
    assert code == 0, "train-detector exits 0"
    report = json.loads(out.with_suffix(".json").read_text())
    assert (report["architecture"], report["input_size"]) == (FAMILY, SIZE), f"trained {report['architecture']}"
    assert report["train"]["steps"] >= 1, f"no optimizer step in the budget: {report['train']}"
    assert math.isfinite(report["train"]["final_loss"]), f"loss {report['train']['final_loss']}"
    assert report["eval"]["images"] == 3 and 0.0 <= report["eval"]["map"] <= 1.0, f"eval {report['eval']}"
    # and the checkpoint loads back as the family and exports to an IR that detects
    config = DetectorConfig(architecture=FAMILY, input_size=SIZE, checkpoint=str(out))
    model = build_detector(config)
    assert type(model).__name__ == "FasterRCNN", f"built {type(model).__name__}"
    ir = ensure_fp16_ir(config, tmp_path / "models")
    frames = load_eval_split(tmp_path / "eval").images
    found = detect(load_detector(ir), frames)
    assert len(found) == len(frames), f"the IR answered {len(found)} of {len(frames)} frames"
    assert all(d.boxes.shape == (len(d.scores), 4) for d in found), "every answer holds boxes with scores"
