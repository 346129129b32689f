"""detector.ops.roi_align against torchvision.ops.roi_align (where the semantics coincide) and gradcheck."""

import importlib
import itertools
import math
import warnings
import zlib

import pytest
import torch
import torchvision

from detector.ops import RoIAlign, roi_align, roi_align_samples


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
    """Every mode on both devices, values and gradients (CUDA runs torchvision's kernel where it can);
    a bf16 map on CUDA against float32 on the CPU within bf16's precision."""
    x = torch.randn(2, 8, 18, 25)
    rois = _random_rois(40, 2, torch.float32, 0)

    def run(device, dtype, reduction, layout, aligned, ratio):
        xd = x.detach().to(device, dtype).requires_grad_(True)
        out = roi_align(xd, rois.to(device), 7, 1 / 32, ratio, aligned, reduction=reduction, sample_layout=layout)
        out.backward(torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape).to(dtype))
        return out.float().cpu(), xd.grad.float().cpu()

    for setting in itertools.product(["avg", "max"], ["centered", "interior"], [False, True], [0, 2]):
        out, grad = run("cpu", torch.float32, *setting)
        torch.testing.assert_close(run("cuda", torch.float32, *setting), (out, grad), rtol=1e-4, atol=1e-4)
        out_bf16, grad_bf16 = run("cuda", torch.bfloat16, *setting)
        torch.testing.assert_close(out_bf16, out, rtol=2e-2, atol=5e-2)
        assert (grad_bf16 - grad).norm() <= 0.02 * grad.norm(), setting
    samples = roi_align_samples(x, rois, 7, 1 / 32, 2, True, sample_layout="interior")
    torch.testing.assert_close(roi_align_samples(x.cuda(), rois.cuda(), 7, 1 / 32, 2, True, sample_layout="interior").cpu(), samples)


def _inside_rois(n, num_images, seed, extent=(400.0, 288.0)):
    """RoIs wholly inside a 400 x 288 image (no sample clamped to an edge, so no tied samples)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor(extent, dtype=torch.float64) * 0.6 + 10
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 80 + 20
    idx = torch.randint(0, num_images, (n, 1), generator=g).to(torch.float64)
    return torch.cat([idx, xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned,n,output_size", itertools.product([False, True], [1, 2, 3], [2, (3, 4), 7]))
def test_max_centered_is_torchvision_subbins_then_max_pool(aligned, n, output_size):
    # With the centered layout, the n x n samples of a bin are exactly the centres of its n x n
    # sub-bins: torchvision's roi_align at (kh*n, kw*n) with one sample per bin, then an n x n
    # max-pool, is an independent reference for the max reduction, forward and backward.
    seed = zlib.crc32(repr((aligned, n, output_size)).encode())
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(2, 3, 18, 25, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    rois = _inside_rois(30, 2, seed)
    kh, kw = (output_size, output_size) if isinstance(output_size, int) else output_size
    ours = roi_align(x1, rois, output_size, 1 / 16, n, aligned, reduction="max")
    ref = torch.nn.functional.max_pool2d(torchvision.ops.roi_align(x2, rois, (kh * n, kw * n), 1 / 16, 1, aligned), n)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)


def _bilinear(fm, y, x):
    """torchvision's bilinear_interpolate for one point of a [C, H, W] map, written out by hand."""
    height, width = fm.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(fm.shape[0], dtype=fm.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * fm[:, y0, x0] + hy * lx * fm[:, y0, x1] + ly * hx * fm[:, y1, x0] + ly * lx * fm[:, y1, x1]


def _reference_roi_align(inp, rois, k, scale, sampling_ratio, aligned, reduction, layout):
    """A slow, loop-by-loop RoIAlign with every option, independent of detector.ops."""
    out = torch.zeros(rois.shape[0], inp.shape[1], k, k, dtype=inp.dtype)
    offset = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (v * scale - offset for v in (x1, y1, x2, y2))
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bw, bh = w / k, h / k
        ny = sampling_ratio if sampling_ratio > 0 else math.ceil(h / k)
        nx = sampling_ratio if sampling_ratio > 0 else math.ceil(w / k)
        if ny == 0 or nx == 0:
            continue  # no sample: reads 0
        fy = [(t + 1) / (ny + 1) if layout == "interior" else (t + 0.5) / ny for t in range(ny)]
        fx = [(t + 1) / (nx + 1) if layout == "interior" else (t + 0.5) / nx for t in range(nx)]
        for i in range(k):
            for j in range(k):
                values = torch.stack([_bilinear(inp[int(b)], y1 + bh * (i + a), x1 + bw * (j + c)) for a in fy for c in fx])
                out[r, :, i, j] = values.amax(0) if reduction == "max" else values.mean(0)
    return out


@pytest.mark.parametrize(
    "reduction,layout,sampling_ratio,aligned",
    itertools.product(["avg", "max"], ["centered", "interior"], [-1, 1, 3], [False, True]),
)
def test_every_variant_matches_a_slow_reference(reduction, layout, sampling_ratio, aligned):
    seed = zlib.crc32(repr((reduction, layout, sampling_ratio, aligned)).encode())
    g = torch.Generator().manual_seed(seed)
    inp = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = _random_rois(10, 2, torch.float64, seed, extent=(88.0, 72.0))  # includes zero-size and outside boxes
    ours = roi_align(inp, rois, 3, 1 / 8, sampling_ratio, aligned, reduction=reduction, sample_layout=layout)
    ref = _reference_roi_align(inp, rois, 3, 1 / 8, sampling_ratio, aligned, reduction, layout)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["avg", "max", "samples"])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_chunks_give_the_same_result(monkeypatch, reduction, sampling_ratio):
    # The CPU path runs in cache-sized chunks of RoIs; tiny chunks (one RoI, then three with a
    # ragged last chunk) must give exactly what one chunk gives, forward and backward.
    sparse_map = importlib.import_module("detector.ops.sparse_map")
    g = torch.Generator().manual_seed(7)
    inp = torch.randn(2, 4, 18, 25, generator=g, dtype=torch.float64)
    rois = _random_rois(11, 2, torch.float64, 7)

    def run():
        x = inp.clone().requires_grad_(True)
        if reduction == "samples":
            out = roi_align_samples(x, rois, 3, 1 / 32, max(sampling_ratio, 1), True)
        else:
            out = roi_align(x, rois, 3, 1 / 32, sampling_ratio, True, reduction=reduction)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape))
        return out.detach(), x.grad

    monkeypatch.setattr(sparse_map, "CPU_CHUNK_ELEMENTS", 1 << 30)
    whole = run()
    # 1 element: one RoI per chunk; 4 channels x 36 samples x 3: three RoIs per chunk (or fewer
    # with adaptive grids), the last chunk ragged (11 RoIs).
    for budget in (1, 4 * 36 * 3):
        monkeypatch.setattr(sparse_map, "CPU_CHUNK_ELEMENTS", budget)
        with warnings.catch_warnings():  # e.g. a chunk's buffer that torch had to resize: wrong bounds
            warnings.simplefilter("error")
            chunked = run()
        for a, b in zip(chunked, whole):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_batch_index_out_of_range_is_a_clear_error():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"batch indices must lie in \[0, 1\].*got 0\.\.2"):
        roi_align(x, torch.tensor([[0, 0, 0, 10, 10.0], [2, 0, 0, 10, 10.0]]), 2, 1 / 8, 2, True)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(x, torch.tensor([[-1, 0, 0, 10, 10.0]]), 2, 1 / 8, 2, True, reduction="max")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_half_precision_maps(dtype, reduction):
    x = torch.randn(2, 4, 18, 25)
    rois = _random_rois(16, 2, torch.float32, 3)
    ref = roi_align(x, rois, 7, 1 / 32, 2, True, reduction=reduction)
    low = x.to(dtype).requires_grad_(True)
    out = roi_align(low, rois, 7, 1 / 32, 2, True, reduction=reduction)  # float32 boxes, as under autocast
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()


def test_bf16_map_pooled_directly_is_within_two_bf16_roundings_and_matches_torchvision_under_autocast():
    """A bf16 map is pooled without a float32 copy: the weights are rounded to bf16 for the gather
    and the gradient is summed in float32. The stated tolerance, against float64 pooling of the
    same bf16 values: at most two bf16 roundings (2 * 2**-8) of the largest output, and a mean error
    at most 1.5x that of pooling in float32 and rounding the result to bf16 (what torchvision's
    autocast wrapper returns)."""
    x = torch.randn(4, 64, 8, 10).relu().bfloat16()
    rois = _inside_rois(512, 4, 5, extent=(320.0, 256.0)).float()
    ref = roi_align(x.double(), rois.double(), 7, 1 / 32, 2, True)
    direct = roi_align(x, rois, 7, 1 / 32, 2, True)
    assert direct.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tv = torchvision.ops.roi_align(x, rois, 7, 1 / 32, 2, True)
    rounded = tv.to(torch.bfloat16).double()
    ours_rounded = roi_align(x.float(), rois, 7, 1 / 32, 2, True).bfloat16().double()
    torch.testing.assert_close(rounded, ours_rounded, rtol=2**-7, atol=1e-6)  # one bf16 ulp: float32 sums differ in order
    err, err_rounded = (direct.double() - ref).abs(), (rounded - ref).abs()
    assert err.max() <= 2 * 2**-8 * ref.abs().max()
    assert err.mean() <= 1.5 * err_rounded.mean()
    # The backward: float32 sums of the bf16 gradient rows, rounded once.
    grad_out = torch.randn(direct.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    low = x.clone().requires_grad_(True)
    roi_align(low, rois, 7, 1 / 32, 2, True).backward(grad_out)
    full = x.float().requires_grad_(True)
    roi_align(full, rois, 7, 1 / 32, 2, True).backward(grad_out.float())
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), full.grad.bfloat16().float(), rtol=0, atol=2**-8 * float(full.grad.abs().max()))


@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_inverted_boxes_read_zero(reduction):
    # x2 < x1 (or y2 < y1) with ``aligned``: an adaptive grid of ceil(negative) samples, i.e. none.
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    # Inverted in x only (a tall box: several rows of samples), a normal box, inverted in both.
    rois = torch.tensor([[0, 40.0, 2.0, 10.0, 62.0], [0, 5.0, 5.0, 60.0, 40.0], [0, 30.0, 30.0, 20.0, 10.0]], dtype=torch.float64)
    out = roi_align(x, rois, 2, 1 / 8, -1, True, reduction=reduction)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
    alone = roi_align(x, rois[1:2], 2, 1 / 8, -1, True, reduction=reduction)
    torch.testing.assert_close(out[1:2], alone)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_samples_exactly_one_cell_outside_or_on_the_far_border_are_read_like_torchvision():
    # torchvision reads a sample at -1 <= c <= size (clamped into the map) and 0 beyond. Boxes whose
    # one sample (sampling_ratio 1, one bin, aligned=False) lies exactly on -1 or on W / H.
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    rois = torch.tensor([
        [0, -2.0, 1.0, 0.0, 3.0],  # sample at x = -1: reads column 0
        [0, 5.0, 1.0, 7.0, 3.0],  # x = 6 = W: reads column 5
        [0, 1.0, -2.0, 3.0, 0.0],  # y = -1: row 0
        [0, 1.0, 4.0, 3.0, 6.0],  # y = 5 = H: row 4
        [0, -2.1, 1.0, -0.1, 3.0],  # x = -1.1: outside, reads 0
    ], dtype=torch.float64)  # fmt: skip
    ours = roi_align(x, rois, 1, 1.0, 1, False)
    torch.testing.assert_close(ours, torchvision.ops.roi_align(x, rois, 1, 1.0, 1, False), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours[:4, :, 0, 0], torch.stack([x[0, :, 2, 0], x[0, :, 2, 5], x[0, :, 0, 2], x[0, :, 4, 2]]))
    assert torch.equal(ours[4], torch.zeros_like(ours[4]))


@pytest.mark.parametrize("sampling_ratio", [0, -1])
def test_boxes_flat_in_one_direction_have_no_adaptive_samples_like_torchvision(sampling_ratio):
    # aligned: a box of zero height (or width) has an adaptive grid of 0 rows (or columns), so no
    # sample at all however wide it is; torchvision gives 0 and so must we.
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64) + 3
    rois = torch.tensor([[0, 8.0, 20.0, 56.0, 20.0], [0, 20.0, 8.0, 20.0, 56.0], [0, 8.0, 8.0, 56.0, 56.0]], dtype=torch.float64)
    ours = roi_align(x, rois, 2, 1 / 8, sampling_ratio, True)
    torch.testing.assert_close(ours, torchvision.ops.roi_align(x, rois, 2, 1 / 8, sampling_ratio, True), rtol=0, atol=1e-12)
    assert torch.equal(ours[:2], torch.zeros_like(ours[:2])) and bool((ours[2] != 0).all())


@pytest.mark.parametrize("layout", ["centered", "interior"])
def test_adaptive_max_pools_each_roi_on_its_own_grid(layout):
    # An adaptive max runs once per distinct (n_h, n_w) grid: RoIs of other grids in one call would
    # read their padding samples' 0 on an all-negative map. These grids, (1, 3), (2, 1), (5, 1) and
    # (1, 2) (one bin, a grid of ceil(size) samples), give one key each only when the key is exact
    # (h * (max n_w + 1) + w); each RoI in the batch must equal the RoI alone.
    x = -1 - torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[0, 1, 1, 3.5, 2], [0, 1, 1, 2, 2.5], [0, 1, 1, 2, 5.5], [0, 1, 1, 2.5, 2]], dtype=torch.float64)
    together = roi_align(x, rois, 1, 1.0, -1, False, reduction="max", sample_layout=layout)
    alone = torch.cat([roi_align(x, r[None], 1, 1.0, -1, False, reduction="max", sample_layout=layout) for r in rois])
    assert bool((alone < -1).all())
    torch.testing.assert_close(together, alone, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_maps_one_cell_wide_or_high(reduction):
    # An image narrower than one stride gives a map one cell wide: every sample reads that one column.
    x = torch.randn(1, 2, 6, 1, dtype=torch.float64)
    rois = torch.tensor([[0, 0.0, 0.0, 1.0, 6.0], [0, -0.5, 1.0, 0.7, 3.0]], dtype=torch.float64)
    for inp, boxes in ((x, rois), (x.transpose(2, 3), rois[:, [0, 2, 1, 4, 3]])):
        ours = roi_align(inp, boxes, 2, 1.0, 2, True, reduction=reduction)
        ref = _reference_roi_align(inp, boxes, 2, 1.0, 2, True, reduction, "centered")
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        if reduction == "avg":
            torch.testing.assert_close(ours, torchvision.ops.roi_align(inp, boxes, 2, 1.0, 2, True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("layout", ["centered", "interior"])
@pytest.mark.parametrize("n", [1, 3])
def test_sample_points_are_where_the_op_samples(aligned, layout, n):
    """On a map that is linear in continuous coordinates (cell c's value at c + 0.5, the seed's
    convention), bilinear interpolation is exact inside the map: an avg bin reads f at the mean of its
    points, a max bin (f increasing in x and y) f at its last point. So ``sample_points`` must place
    every point where the operator reads, for both ``aligned`` conventions and both layouts."""
    from detector.ops import sample_points

    h, w = 20, 30
    cy, cx = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    f = lambda x, y: 3.0 * x + 7.0 * y + 1.0  # noqa: E731
    features = f(cx, cy)[None, None]
    box = (70.0, 100.0, 450.0, 355.0)  # cells 2.2..14.1 x 3.1..11.1 at stride 32: inside, not on the grid
    xs, ys = sample_points(box, (2, 3), 1 / 32, n, aligned, sample_layout=layout)
    assert xs.shape == (3 * n,) and ys.shape == (2 * n,)
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    for reduction in ("avg", "max"):
        out = roi_align(features, rois, (2, 3), 1 / 32, n, aligned, reduction=reduction, sample_layout=layout)[0, 0]
        xb, yb = xs.reshape(3, n), ys.reshape(2, n)
        x_read, y_read = (xb.mean(1), yb.mean(1)) if reduction == "avg" else (xb[:, -1], yb[:, -1])
        torch.testing.assert_close(out, f(x_read[None, :], y_read[:, None]), rtol=0, atol=1e-9)


def test_sample_points_needs_a_fixed_grid():
    from detector.ops import sample_points

    with pytest.raises(ValueError, match="^sample_points needs a fixed sampling_ratio >= 1$"):
        sample_points((0.0, 0.0, 64.0, 64.0), 2, 1 / 32, 0, True)
    xs, ys = sample_points((0.0, 0.0, 64.0, 64.0), 2, 1 / 32, 1, True)  # one point per bin: its centre
    torch.testing.assert_close(xs, torch.tensor([0.5, 1.5], dtype=torch.float64))
    # the default layout is the centred one (torchvision's), as for roi_align
    box = (300.0, 210.0, 530.0, 390.0)
    for got, want in zip(sample_points(box, 3, 1 / 32, 2, True), sample_points(box, 3, 1 / 32, 2, True, sample_layout="centered")):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match=r"^sample_layout must be one of \('centered', 'interior'\), got 'grid'$"):
        sample_points(box, 3, 1 / 32, 2, True, sample_layout="grid")


def test_roi_align_samples_needs_a_fixed_grid_and_keeps_its_shape_without_boxes():
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    for ratio in (0, -1):
        with pytest.raises(ValueError, match=r"^roi_align_samples needs a fixed sampling_ratio >= 1$"):
            roi_align_samples(x, torch.zeros(0, 5), 2, 1.0, ratio, True)
    out = roi_align_samples(x, torch.zeros(0, 5), (2, 3), 1.0, 2, True)
    assert out.shape == (0, 3, 4, 6)
    out.sum().backward()  # the empty batch stays connected to the graph
    assert x.grad is not None and not x.grad.any()


def test_roi_align_samples_is_refused_while_exporting(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["detector.ops.roi_align"], "exporting", lambda: True)
    with pytest.raises(ValueError, match="^roi_align_samples is an inspection tool; it is not exported$"):
        roi_align_samples(torch.rand(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), 2, 1.0, 2, True)


@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_boxes_without_samples_and_empty_batches_on_an_all_zero_map(reduction):
    # A map that sums to 0 (ReLU output, padding) must not turn the empty results' graph link into 0 / 0.
    x = torch.zeros(1, 2, 8, 8, requires_grad=True)
    inverted = torch.tensor([[0, 30.0, 30.0, 20.0, 10.0]])
    for out in (roi_align(x, inverted, 2, 1 / 8, -1, True, reduction=reduction),
                roi_align(x, torch.zeros(0, 5), 2, 1 / 8, -1, True, reduction=reduction),
                roi_align_samples(x, torch.zeros(0, 5), 2, 1 / 8, 2, True)):
        x.grad = None
        out.sum().backward()
        assert not out.isnan().any() and torch.equal(x.grad, torch.zeros_like(x))
    # The empty results' shapes: bins, or bins times the samples per side.
    assert roi_align(x, torch.zeros(0, 5), (2, 3), 1 / 8, 2, True, reduction=reduction).shape == (0, 2, 2, 3)
    for ratio in (1, 2):
        assert roi_align_samples(x, torch.zeros(0, 5), (2, 3), 1 / 8, ratio, True).shape == (0, 2, 2 * ratio, 3 * ratio)


def test_the_index_type_is_int32_exactly_while_every_index_fits():
    from detector.ops.sparse_map import plan_chunks

    cpu = torch.device("cpu")

    def dtype(**sizes):
        args = {"num_rois": 1, "a": 1, "b": 1, "kernel": None, "channels": 1, "taps": 1, "num_cells": 1, "device": cpu}
        return plan_chunks(**{**args, **sizes})[1]

    # the backward's (chunk, cell) keys: chunks x cells; the taps: RoIs x rows x columns x taps per sample
    assert dtype(num_cells=2**31 - 1) == torch.int32 and dtype(num_cells=2**31) == torch.int64
    two_chunks = {"num_rois": 2, "channels": 2**20}  # one RoI per chunk of 2**20 elements
    assert dtype(**two_chunks, num_cells=2**30 - 1) == torch.int32 and dtype(**two_chunks, num_cells=2**30) == torch.int64
    assert dtype(num_rois=2**15, a=2**8, b=2**8, taps=1, channels=2**20) == torch.int64  # 2**31 taps
    assert dtype(num_rois=2**15 - 1, a=2**8, b=2**8, taps=1, channels=2**20) == torch.int32
    assert dtype(num_rois=2**13, a=2**8, b=2**8, taps=4, channels=2**20) == torch.int64  # 4 taps per sample
    assert dtype(num_rois=2**13 - 1, a=2**8, b=2**8, taps=4, channels=2**20) == torch.int32


def test_the_functions_defaults_are_torchvisions():
    # spatial_scale 1, adaptive sampling, aligned=False, average: torchvision.ops.roi_align with its own defaults
    from torchvision.ops import roi_align as tv_roi_align

    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    boxes = torch.tensor([[0, 1.0, 2.0, 9.5, 7.0], [0, 0.5, 0.5, 3.0, 11.0]], dtype=torch.float64)
    torch.testing.assert_close(roi_align(x, boxes, 2), tv_roi_align(x, boxes, 2))


def test_the_module_passes_every_setting_on():
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    boxes = torch.tensor([[0, 3.3, 2.1, 40.0, 51.7], [0, 10.0, 12.0, 30.5, 20.0]], dtype=torch.float64)
    settings = [dict(sampling_ratio=s, aligned=a, reduction=r, sample_layout=lay)
                for s in (1, 3) for a in (False, True) for r in ("avg", "max") for lay in ("centered", "interior")]
    outputs = []
    for kw in settings:
        module = RoIAlign(output_size=(2, 3), spatial_scale=1 / 4, **kw)
        out = module(x, boxes)
        torch.testing.assert_close(out, roi_align(x, boxes, (2, 3), 1 / 4, **kw), rtol=0, atol=0)
        outputs.append(out)
    # each setting changes the numbers here (from 3 interior samples, aligned, averaged), so a module
    # that dropped one would be caught above
    by = {tuple(kw.values()): out for kw, out in zip(settings, outputs)}
    base = (3, True, "avg", "interior")
    for flipped in ((1, True, "avg", "interior"), (3, False, "avg", "interior"), (3, True, "max", "interior"),
                    (3, True, "avg", "centered")):
        assert not torch.equal(by[flipped], by[base]), flipped
    with pytest.raises(ValueError, match=r"^sample_layout must be one of \('centered', 'interior'\), got 'grid'$"):
        RoIAlign(output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=True, sample_layout="grid")
    with pytest.raises(ValueError, match=r"^reduction must be one of \('avg', 'max'\), got 'sum'$"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), 2, reduction="sum")
