import os

import pytest
import torch
from torchvision.models import vgg16

from detector.errors import CheckpointError, ConfigError
from detector.modeling.backbone import VGG16Backbone


def test_stride_32_reproduces_the_seed_map_size():
    b = VGG16Backbone(width=0.0625)
    assert b(torch.zeros(1, 3, 576, 800)).shape == (1, 32, 18, 25)  # 800/32 x 576/32 = 25 x 18


def test_stride_16_drops_the_last_pool():
    b = VGG16Backbone(stride=16, width=0.0625)
    assert b(torch.zeros(1, 3, 576, 800)).shape == (1, 32, 36, 50)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in b.features) == 4


def test_width_and_batch_norm():
    b = VGG16Backbone(width=0.25, batch_norm=True)
    assert b.out_channels == 128
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in b.features)


@pytest.mark.parametrize("train", [True, False])
def test_channels_last_computes_the_same_map_in_the_usual_layout(train):
    """The NHWC path is a speed option: same map (float32 rounding aside), NCHW out, same gradients
    and BatchNorm statistics, the same state dict (the weights keep their layout)."""
    torch.manual_seed(0)
    # float64: through 13 BatchNorm layers in training mode the first layer's gradient is the small
    # difference of large terms, and float32's different summation orders move it by ~1 %.
    plain = VGG16Backbone(width=0.125, batch_norm=True).double()
    fast = VGG16Backbone(width=0.125, batch_norm=True, channels_last=True).double()
    fast.load_state_dict(plain.state_dict())
    plain.train(train), fast.train(train)
    x = torch.randn(2, 3, 96, 160, dtype=torch.float64)
    ya, yb = plain(x), fast(x)
    assert yb.is_contiguous() and yb.shape == ya.shape == (2, 64, 3, 5)
    torch.testing.assert_close(yb, ya)
    (ya * ya).sum().backward()
    (yb * yb).sum().backward()
    for (name, pa), pb in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, msg=name)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert b.is_contiguous(), name
        torch.testing.assert_close(b, a, msg=name)
    assert "channels_last=True" in repr(fast)


@pytest.mark.parametrize("width, train, nchw_norms", [
    (0.125, True, 2),    # bn1_1, bn1_2: 8 channels, NHWC BatchNorm backward is slow there
    (0.0625, True, 4),   # stages 1 and 2: 4 and 8 channels
    (0.25, True, 0),     # 16 channels from the first stage on
    (0.125, False, 0),   # evaluation: every stage NHWC
])
def test_channels_last_keeps_narrow_stages_batchnorm_nchw_in_training(width, train, nchw_norms):
    """Every convolution reads NHWC (oneDNN's NCHW backward is several times slower at 8 channels);
    the narrow stages' BatchNorm layers read NCHW in training (PyTorch's NHWC backward is slow there)."""
    b = VGG16Backbone(width=width, batch_norm=True, channels_last=True).train(train)
    convs, norms = [], []
    for m in b.features:
        seen = convs if isinstance(m, torch.nn.Conv2d) else norms if isinstance(m, torch.nn.BatchNorm2d) else None
        if seen is not None:
            m.register_forward_pre_hook(
                lambda _, args, seen=seen: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    b(torch.randn(2, 3, 64, 64))
    assert convs == [True] * 13
    assert norms == [False] * nchw_norms + [True] * (13 - nchw_norms)


def test_freeze_at_freezes_whole_stages():
    b = VGG16Backbone(width=0.0625, batch_norm=True, freeze_at=2)
    convs = [m for m in b.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False] * 4 + [True] * 9
    b.train()
    bns = [m for m in b.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert [bn.training for bn in bns] == [False] * 4 + [True] * 9


def test_local_weights_file_loads_torchvision_vgg16(tmp_path):
    ref = vgg16()  # random init, same layer names as the ImageNet file
    path = tmp_path / "vgg16.pth"
    torch.save(ref.state_dict(), path)
    b = VGG16Backbone(weights=str(path))
    torch.testing.assert_close(b.features[0].weight, ref.features[0].weight)
    torch.testing.assert_close(b.features[28].bias, ref.features[28].bias)


def test_imagenet_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    # With the file already in torch's hub cache nothing is downloaded: this is how an offline
    # machine uses the ImageNet weights. The test writes a stand-in file under the expected name.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        ckpt_dir = tmp_path / "hub" / "checkpoints"
        ckpt_dir.mkdir(parents=True)
        ref = vgg16()
        torch.save(ref.state_dict(), ckpt_dir / "vgg16-397923af.pth")
        # The real file's hash prefix would not match this stand-in; skip the hash check for it.
        real = torch.hub.load_state_dict_from_url
        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: real(url, **{**kw, "check_hash": False}))
        b = VGG16Backbone(weights="imagenet")
        torch.testing.assert_close(b.features[2].weight, ref.features[2].weight)
    finally:
        torch.hub.set_dir(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub"))


def test_imagenet_offline_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="cannot download ImageNet VGG16 weights.*weights="):
        VGG16Backbone(weights="imagenet")


def test_bad_weights_and_options():
    with pytest.raises(CheckpointError, match="not found"):
        VGG16Backbone(weights="/nonexistent/vgg.pth")
    with pytest.raises(ConfigError, match="width=1.0"):
        VGG16Backbone(width=0.5, weights="imagenet")
    with pytest.raises(ConfigError, match="stride"):
        VGG16Backbone(stride=8)


def test_weights_of_another_width_do_not_fit(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(VGG16Backbone(width=0.125).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit"):
        VGG16Backbone(width=0.25, weights=str(path))


class _Payload:
    """A pickled object whose unpickling would call os.system: weights_only loading must refuse it."""

    def __reduce__(self):
        import os

        return (os.system, ("echo PWNED > pwned.txt",))


def test_a_weights_file_holding_pickled_code_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"features.0.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"cannot read backbone weights .*evil\.pth"):
        VGG16Backbone(stride=32, width=0.0625, weights=str(tmp_path / "evil.pth"))
    assert not (tmp_path / "pwned.txt").exists()


def test_sync_batchnorm_keeps_frozen_stages_frozen():
    """model.sync_bn converts every BatchNorm to SyncBatchNorm (done here on the CPU: the conversion needs
    no GPU, only its forward does); the frozen stages' statistics must still not update in train()."""
    b = torch.nn.SyncBatchNorm.convert_sync_batchnorm(VGG16Backbone(width=0.0625, batch_norm=True, freeze_at=2))
    b.train()
    bns = [m for m in b.features if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(bn, torch.nn.SyncBatchNorm) for bn in bns) and len(bns) == 13
    assert [bn.training for bn in bns] == [False] * 4 + [True] * 9
    assert [bn.weight.requires_grad for bn in bns] == [False] * 4 + [True] * 9
