"""The HED -> torchvision VGG16 conversion: the first conv on the normalised RGB input computes what
HED's conv computes on Caffe's BGR input (checked against torch's own conv2d on both inputs)."""

import torch
import torch.nn.functional as F

from benchmarks.vgg16_from_hed import FEATURE_INDEX, KERAS_CONVS, convert
from detector.modeling.backbone import VGG16Backbone

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _keras_arrays(generator):
    channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    arrays = {}
    for i, name in enumerate(KERAS_CONVS):
        arrays[f"{name}/vars/0"] = torch.randn(3, 3, channels[i], channels[i + 1], generator=generator).numpy()
        arrays[f"{name}/vars/1"] = torch.randn(channels[i + 1], generator=generator).numpy()
    return arrays


def test_first_conv_on_normalised_rgb_equals_hed_on_caffe_bgr():
    g = torch.Generator().manual_seed(0)
    arrays = _keras_arrays(g)
    state = convert(arrays, pixel_mean=MEAN, pixel_std=STD)
    image = torch.rand(1, 3, 12, 10, generator=g, dtype=torch.float64)  # RGB in 0..1
    # HED's input: BGR, 0..255, minus Caffe's mean; its kernel in Keras layout [kh, kw, in, out].
    caffe = image.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68], dtype=torch.float64)[None, :, None, None]
    hed_w = torch.as_tensor(arrays["block1/layers/conv2d/vars/0"], dtype=torch.float64).permute(3, 2, 0, 1)
    hed_b = torch.as_tensor(arrays["block1/layers/conv2d/vars/1"], dtype=torch.float64)
    expected = F.conv2d(caffe, hed_w, hed_b)  # no padding: the interior, where the fold is exact
    mean, std = (torch.tensor(v, dtype=torch.float64)[None, :, None, None] for v in (MEAN, STD))
    normalised = (image - mean) / std
    got = F.conv2d(normalised, state["features.0.weight"].double(), state["features.0.bias"].double())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    # Later convs: the Keras kernel transposed, nothing else.
    torch.testing.assert_close(state["features.28.weight"], torch.as_tensor(arrays["block5/layers/conv2d_2/vars/0"]).permute(3, 2, 0, 1))


def test_the_converted_file_loads_into_the_full_width_backbone(tmp_path):
    state = convert(_keras_arrays(torch.Generator().manual_seed(1)), pixel_mean=MEAN, pixel_std=STD)
    assert sorted(int(k.split(".")[1]) for k in state if k.endswith("weight")) == FEATURE_INDEX
    torch.save(state, tmp_path / "vgg16.pth")
    backbone = VGG16Backbone(width=1.0, batch_norm=False, weights=str(tmp_path / "vgg16.pth"))
    torch.testing.assert_close(backbone.features[12].weight, state["features.12.weight"])
