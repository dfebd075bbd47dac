"""Activation profiles on a tiny real IR: shapes, names, and min/max equal to a numpy reference."""

import numpy as np
import pytest
import torch

from tasks.calibration.profiles import ActivationProfileError, activation_profiles, merge_profiles

pytestmark = pytest.mark.integration


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    import openvino as ov

    torch.manual_seed(0)
    net = TinyNet().eval()
    model = ov.convert_model(net, example_input=torch.zeros(1, 3, 8, 8))
    path = tmp_path_factory.mktemp("tiny") / "tiny.xml"
    ov.save_model(model, str(path), compress_to_fp16=True)
    return path, net


def conv2d(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Same-padded stride-1 convolution, no bias: x [N,C,H,W], weight [O,C,k,k]."""
    pad = weight.shape[-1] // 2
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, weight.shape[-2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, weight)


def fp16(t: torch.Tensor) -> np.ndarray:
    # The IR stores weights in FP16 (compress_to_fp16=True), so the reference uses the same rounding.
    return t.detach().numpy().astype(np.float16).astype(np.float32)


def test_profiles_match_numpy_on_known_inputs(tiny_ir):
    # given two batches (3 images) of a tiny conv net's IR
    path, net = tiny_ir
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(2, 3, 8, 8)).astype(np.float32), rng.normal(size=(1, 3, 8, 8)).astype(np.float32)]
    images = np.concatenate(batches)
    # when conv outputs are profiled
    out = activation_profiles(path, batches, ids=["a", "b", "c"], site="output")
    # then there is one row per image, one layer per conv, and conv1's min/max are numpy's
    assert out.values.shape == (3, 2, 2), f"expected [3 images, 2 convs, (min, max)], got {out.values.shape}"
    assert out.ids == ("a", "b", "c"), f"ids should name the rows in order, got {out.ids}"
    conv1 = conv2d(images, fp16(net.conv1.weight))
    want = np.stack([conv1.reshape(3, -1).min(1), conv1.reshape(3, -1).max(1)], axis=1)
    np.testing.assert_allclose(out.values[:, 0], want, rtol=1e-4, atol=1e-4, err_msg="conv1 output min/max")


def test_input_sites_are_what_nncf_quantizes(tiny_ir):
    # given the same net, when the tensors feeding each convolution are profiled (the default)
    path, net = tiny_ir
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    out = activation_profiles(path, [x])
    # then conv1's input is the image and conv2's input is relu(conv1 + bias)
    assert len(out.layer_names) == 2, f"two convolution inputs expected, got {out.layer_names}"
    np.testing.assert_allclose(out.values[0, 0], [x.min(), x.max()], rtol=1e-6, err_msg="conv1 input is the image")
    hidden = np.maximum(conv2d(x, fp16(net.conv1.weight)) + fp16(net.conv1.bias)[None, :, None, None], 0)
    np.testing.assert_allclose(
        out.values[0, 1], [hidden.min(), hidden.max()], rtol=1e-4, atol=1e-4, err_msg="conv2 input is relu(conv1)"
    )
    # and max_layers keeps evenly spaced sites, first and last
    assert activation_profiles(path, [x], max_layers=1).values.shape == (1, 1, 2), "max_layers=1 keeps one site"


def test_mismatched_ids_fail_clearly(tiny_ir):
    path, _ = tiny_ir
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ActivationProfileError, match="1 ids given for 2"):
        activation_profiles(path, [x], ids=["a"])
    with pytest.raises(ActivationProfileError, match="no images"):
        activation_profiles(path, [])


def test_shards_merge_into_the_whole_pools_profiles(tiny_ir):
    path, _ = tiny_ir
    rng = np.random.default_rng(2)
    images = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(5)]
    ids = [f"c{i}" for i in range(5)]
    whole = activation_profiles(path, images, ids=ids)
    parts = [activation_profiles(path, images[a:b], ids=ids[a:b]) for a, b in ((0, 2), (2, 3), (3, 5))]
    merged = merge_profiles(parts)
    assert merged.ids == whole.ids and merged.layer_names == whole.layer_names, "ids and layers in pool order"
    assert np.array_equal(merged.values, whole.values), "shard by shard equals all at once"
    with pytest.raises(ActivationProfileError, match="one IR"):
        merge_profiles([whole, activation_profiles(path, images, max_layers=1, ids=ids)])
    with pytest.raises(ActivationProfileError, match="at least one shard"):
        merge_profiles([])
