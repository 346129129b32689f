"""detector.ops.roi_align against torchvision.ops.roi_align (where the semantics coincide) and gradcheck."""

import itertools
import zlib

import pytest
import torch
import torchvision

from detector.ops import RoIAlign, roi_align


def _random_rois(n, num_images, dtype, seed, extent=(800.0, 576.0)):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor(extent, dtype=dtype) * 1.2 - 60
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 300
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0, 2:] = boxes[0, :2]  # zero-size
    boxes[1, 2:] = boxes[1, :2] + 0.3  # smaller than a cell
    boxes[2] = torch.tensor([-500.0, -500.0, -400.0, -300.0])  # wholly outside the map
    idx = torch.randint(0, num_images, (n, 1), generator=g).to(dtype)
    return torch.cat([idx, boxes], dim=1)


SWEEP = list(itertools.product([torch.float32, torch.float64], [False, True], [-1, 0, 1, 2, 3], [2, 3, 7], [1 / 16, 1 / 32]))


@pytest.mark.parametrize("dtype,aligned,sampling_ratio,output_size,scale", SWEEP)
def test_equals_torchvision_forward_backward(dtype, aligned, sampling_ratio, output_size, scale):
    seed = zlib.crc32(repr((dtype, aligned, sampling_ratio, output_size, scale)).encode())
    g = torch.Generator().manual_seed(seed)
    h, w = (36, 50) if scale == 1 / 16 else (18, 25)
    # Non-contiguous input: a channels-last view sliced along the channel dimension.
    base = torch.randn(2, h, w, 10, generator=g, dtype=dtype).permute(0, 3, 1, 2)[:, 1:9]
    rois = _random_rois(24, 2, dtype, seed)
    x1 = base.detach().clone().requires_grad_(True)
    x2 = base.detach().clone().requires_grad_(True)
    ours = roi_align(x1, rois, output_size, scale, sampling_ratio, aligned)
    ref = torchvision.ops.roi_align(x2, rois, output_size, scale, sampling_ratio, aligned)
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, ref, **tol)
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    ours.backward(grad)
    ref.backward(grad)
    # A cell's gradient sums many RoIs' contributions in a different order than torchvision's kernel.
    gtol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else tol
    torch.testing.assert_close(x1.grad, x2.grad, **gtol)


def test_list_of_boxes_and_tuple_output_size():
    x = torch.randn(2, 4, 10, 12)
    boxes = [torch.tensor([[0.0, 0.0, 100.0, 80.0]]), torch.tensor([[10.0, 20.0, 60.0, 90.0], [5.0, 5.0, 9.0, 9.0]])]
    ours = roi_align(x, boxes, (3, 5), 0.125, 2, True)
    ref = torchvision.ops.roi_align(x, boxes, (3, 5), 0.125, 2, True)
    assert ours.shape == (3, 4, 3, 5)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_empty_boxes():
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), 7, 1.0, 2, True)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_unsorted_batch_indices_keep_roi_order():
    x = torch.randn(3, 2, 8, 8)
    rois = torch.tensor([[2, 0, 0, 40, 40], [0, 8, 8, 60, 60], [2, 4, 4, 20, 50], [1, 0, 0, 63, 63.0]])
    torch.testing.assert_close(
        roi_align(x, rois, 2, 1 / 8, 2, False), torchvision.ops.roi_align(x, rois, 2, 1 / 8, 2, False)
    )


@pytest.mark.parametrize("reduction,layout", itertools.product(["avg", "max"], ["centered", "interior"]))
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_gradcheck_every_variant(reduction, layout, sampling_ratio):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.3, 5.1, 40.7, 30.2], [1, 10.0, 2.5, 52.0, 47.0], [0, 20.2, 20.9, 21.0, 22.0]], dtype=torch.float64)

    def f(inp):
        return roi_align(inp, rois, 3, 1 / 8, sampling_ratio, True, reduction=reduction, sample_layout=layout)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_max_reduction_is_max_of_avg_samples():
    # With one sample per bin, max and avg are the same samples.
    x = torch.randn(1, 3, 9, 9)
    rois = torch.tensor([[0, 1.0, 2.0, 60.0, 50.0]])
    a = roi_align(x, rois, 3, 1 / 8, 1, True, reduction="avg")
    m = roi_align(x, rois, 3, 1 / 8, 1, True, reduction="max")
    torch.testing.assert_close(a, m)
    # With more samples, the max is at least the average.
    a = roi_align(x, rois, 3, 1 / 8, 3, True, reduction="avg")
    m = roi_align(x, rois, 3, 1 / 8, 3, True, reduction="max")
    assert (m >= a - 1e-6).all() and (m > a + 1e-4).any()


def test_module_repr_and_bad_options():
    m = RoIAlign(output_size=7, spatial_scale=1 / 32, sampling_ratio=2, aligned=True, reduction="max", sample_layout="interior")
    assert "reduction='max'" in repr(m) and "sample_layout='interior'" in repr(m) and "aligned=True" in repr(m)
    with pytest.raises(ValueError, match="reduction"):
        RoIAlign(output_size=7, spatial_scale=1.0, sampling_ratio=2, aligned=True, reduction="sum")
    with pytest.raises(ValueError, match="sample_layout"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(0, 5), 2, sample_layout="corner")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    x = torch.randn(2, 8, 18, 25)
    rois = _random_rois(40, 2, torch.float32, 0)
    for reduction in ("avg", "max"):
        cpu = roi_align(x, rois, 7, 1 / 32, 2, True, reduction=reduction)
        gpu = roi_align(x.cuda(), rois.cuda(), 7, 1 / 32, 2, True, reduction=reduction)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
