"""detector.ops.roi_pool: "round" is torchvision's op; "floor" against a slow reference of the seed's rule."""

import importlib
import itertools
import math

import pytest
import torch
import torchvision

from detector.ops import RoIPool, roi_pool
from detector.ops._utils import pair
from detector.ops.roi_pool import floor_quantize


def reference_floor_roi_pool(x, rois, k, scale):
    """The seed's rule, one bin at a time: floor origin, floor size, floor bin size (>= 1), crop."""
    kh, kw = k
    out = torch.zeros(len(rois), x.shape[1], kh, kw, dtype=x.dtype)
    H, W = x.shape[-2:]
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        X, Y = math.floor(x1 * scale), math.floor(y1 * scale)
        w, h = math.floor((x2 - x1) * scale), math.floor((y2 - y1) * scale)
        bw, bh = max(w // kw, 1), max(h // kh, 1)
        for i in range(kh):
            for j in range(kw):
                ys, ye = max(Y + i * bh, 0), min(Y + (i + 1) * bh, H)
                xs, xe = max(X + j * bw, 0), min(X + (j + 1) * bw, W)
                if ye > ys and xe > xs:
                    out[r, :, i, j] = x[int(b), :, ys:ye, xs:xe].amax(dim=(-1, -2))
    return out


def _rois(n, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([800.0, 576.0], dtype=dtype) * 1.1 - 40
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 320
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0, 2:] = boxes[0, :2] + 5  # smaller than one cell
    boxes[1] = torch.tensor([-300.0, -300.0, -200.0, -100.0])  # outside the map
    return torch.cat([torch.randint(0, 2, (n, 1), generator=g).to(dtype), boxes], 1)


@pytest.mark.parametrize("dtype,k,scale", list(itertools.product([torch.float32, torch.float64], [2, 3, 7], [1 / 16, 1 / 32])))
def test_round_is_torchvision(dtype, k, scale):
    x = torch.randn(2, 4, 36, 50, dtype=dtype)
    rois = _rois(20, dtype)
    torch.testing.assert_close(roi_pool(x, rois, k, scale), torchvision.ops.roi_pool(x, rois, k, scale))
    grad = torch.randn(20, 4, k, k, dtype=dtype)
    torch.testing.assert_close(_grad(roi_pool, x, rois, k, scale, grad), _grad(torchvision.ops.roi_pool, x, rois, k, scale, grad))


@pytest.mark.parametrize("k,scale", list(itertools.product([(2, 2), (3, 3), (7, 7), (3, 5)], [1 / 16, 1 / 32])))
def test_floor_matches_reference(k, scale):
    x = torch.randn(2, 3, 36, 50, dtype=torch.float64)
    rois = _rois(25, torch.float64, seed=1)
    torch.testing.assert_close(roi_pool(x, rois, k, scale, quantization="floor"), reference_floor_roi_pool(x, rois, k, scale))


def test_floor_gradient_goes_to_the_argmax_cell():
    x = torch.randn(1, 2, 18, 25, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 300.0, 210.0, 530.0, 390.0]], dtype=torch.float64)
    out = roi_pool(x, rois, 3, 1 / 32, quantization="floor")
    out.sum().backward()
    # Each of the 3x3 bins sends gradient 1 to exactly one cell per channel, inside the pooled region.
    assert x.grad.sum().item() == pytest.approx(2 * 9)
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    assert x.grad[:, :, :6].abs().sum() == 0 and x.grad[:, :, 9:].abs().sum() == 0
    assert x.grad[:, :, :, :9].abs().sum() == 0 and x.grad[:, :, :, 15:].abs().sum() == 0
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, 3, 1 / 32, quantization="floor"), (x,))


def test_floor_quantize_is_the_seeds_numbers():
    q = floor_quantize(torch.tensor([[0, 300.0, 210.0, 530.0, 390.0]]), (3, 3), 1 / 32)
    # X = 9.375 -> 9, Y = 6.563 -> 6, W = 7.188 -> 7 -> bins of 2, H = 5.625 -> 5 -> bins of 1.
    assert q.tolist() == [[0.0, 9.0, 6.0, 2.0, 1.0]]


def test_list_boxes_empty_and_module():
    x = torch.randn(2, 3, 10, 10)
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.zeros(0, 4)]
    m = RoIPool(output_size=2, spatial_scale=0.25, quantization="floor")
    assert m(x, boxes).shape == (1, 3, 2, 2)
    assert "quantization='floor'" in repr(m)
    assert roi_pool(x, torch.zeros(0, 5), 2, 0.25, quantization="floor").shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="quantization"):
        RoIPool(output_size=2, spatial_scale=1.0, quantization="ceil")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    """Both rules on both devices, values and gradients; a bf16 map too: its values exactly (a max is
    exact in any dtype), its gradient within bf16's accumulation (the CPU sums in bf16, CUDA in float32)."""
    x = torch.randn(2, 8, 18, 25)
    rois = _rois(30)
    for q, dtype in itertools.product(("round", "floor"), (torch.float32, torch.bfloat16)):
        results = []
        for device in ("cpu", "cuda"):
            xd = x.detach().to(device, dtype).requires_grad_(True)
            out = roi_pool(xd, rois.to(device), 7, 1 / 32, quantization=q)
            out.backward(torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape).to(dtype))
            results.append((out.cpu(), xd.grad.float().cpu()))
        (cpu, cpu_grad), (gpu, gpu_grad) = results
        assert torch.equal(gpu, cpu), (q, dtype)
        if dtype == torch.float32:
            torch.testing.assert_close(gpu_grad, cpu_grad)
        else:
            assert (gpu_grad - cpu_grad).norm() <= 0.02 * cpu_grad.norm(), q


@pytest.mark.parametrize("quantization", ["round", "floor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_cuda_dispatch_run_on_the_cpu_equals_the_rectangle_pool(monkeypatch, quantization, dtype):
    # On CUDA both rules run torchvision's kernel (the floor rule on the window rewritten as a box in
    # cell units). Its CPU kernel takes the same inputs, so deciding as CUDA would checks that
    # dispatch here: values exactly, gradients up to their summation order (a bf16 map's within its
    # accumulation).
    module = importlib.import_module("detector.ops.roi_pool")  # (the package's roi_pool is the function)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 18, 25, generator=g, dtype=torch.float64).to(dtype)
    rois = _rois(30).to(torch.float64)
    upstream = torch.linspace(-1, 1, 30 * 4 * 7 * 7).reshape(30, 4, 7, 7).to(dtype)
    calls = []
    kernel = module._tv_roi_pool
    monkeypatch.setattr(module, "_tv_roi_pool", lambda *args: calls.append(args[2:]) or kernel(*args))
    results = []
    for on_torchvision in (False, True):
        monkeypatch.setattr(module, "uses_torchvision_kernel", lambda device, v=on_torchvision: v)
        xd = x.detach().clone().requires_grad_(True)
        out = roi_pool(xd, rois, 7, 1 / 32, quantization=quantization)
        out.backward(upstream)
        results.append((out, xd.grad))
        # torchvision's kernel runs exactly when decided, the round rule on the boxes as given
        assert calls == ([((7, 7), 1 / 32 if quantization == "round" else 1.0)] if on_torchvision else [])
    (ours, our_grad), (tv, tv_grad) = results
    assert tv.dtype == dtype and torch.equal(tv, ours)
    if dtype == torch.bfloat16:
        assert (tv_grad.float() - our_grad.float()).norm() <= 0.02 * our_grad.float().norm()
    else:  # a cell's gradient summed over its bins in another order
        torch.testing.assert_close(tv_grad, our_grad)


def test_only_cuda_runs_torchvisions_kernel():
    from detector.ops.roi_pool import uses_torchvision_kernel

    assert uses_torchvision_kernel(torch.device("cuda", 0)) and not uses_torchvision_kernel(torch.device("cpu"))


def test_floor_quantizes_in_float64_for_half_precision_maps():
    x = torch.randn(1, 2, 20, 20).half()
    rois = torch.tensor([[0, 319.9, 10.0, 500.0, 300.0]])  # 319.9/32 = 9.997 -> 9, but 319.9 in fp16 is 320
    out = roi_pool(x.float(), rois, 2, 1 / 32, quantization="floor")
    torch.testing.assert_close(roi_pool(x, rois, 2, 1 / 32, quantization="floor").float(), out)


def test_floor_quantizes_float64_boxes_in_float64_on_a_float32_map():
    # A float64 corner a hair left of a cell border: floor(319.999999999 / 32) = 9 in float64, but
    # the corner rounds to 320.0 in float32 (-> 10). The floor rule's geometry is float64 whatever
    # the map's dtype, so a float32 map pools the same cells as its float64 copy.
    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, :, 9] = torch.arange(20.0) + 100  # column 9 holds the maxima: in the window only from 9
    rois = torch.tensor([[0, 320 - 1e-9, 0.0, 640.0, 640.0]], dtype=torch.float64)
    want = roi_pool(x.double(), rois, 2, 1 / 32, quantization="floor")
    assert want[0, 0, :, 0].min() >= 100  # the float64 window starts at column 9
    torch.testing.assert_close(roi_pool(x, rois, 2, 1 / 32, quantization="floor"), want.float())


def _grad(fn, x, rois, k, scale, grad):
    x = x.clone().requires_grad_(True)
    fn(x, rois, k, scale).backward(grad)
    return x.grad


@pytest.mark.parametrize("k,scale", [(7, 1 / 32), (3, 1 / 16), ((2, 5), 1 / 32)])
def test_round_backward_is_torchvision(k, scale):
    x = torch.randn(2, 5, 36, 50, dtype=torch.float64)
    rois = _rois(40, torch.float64, seed=2)
    grad = torch.randn(40, 5, *((k, k) if isinstance(k, int) else k), dtype=torch.float64)
    torch.testing.assert_close(_grad(roi_pool, x, rois, k, scale, grad), _grad(torchvision.ops.roi_pool, x, rois, k, scale, grad))


def test_ties_send_the_gradient_to_the_first_cell_like_torchvision():
    # Integer-valued maps after a ReLU: most bins hold several equal maxima (zeros, mostly).
    x = torch.randint(-3, 3, (2, 4, 18, 25)).double().relu()
    rois = _rois(30, torch.float64, seed=3)
    grad = torch.rand(30, 4, 7, 7, dtype=torch.float64)
    assert torch.equal(roi_pool(x, rois, 7, 1 / 32), torchvision.ops.roi_pool(x, rois, 7, 1 / 32))
    torch.testing.assert_close(_grad(roi_pool, x, rois, 7, 1 / 32, grad), _grad(torchvision.ops.roi_pool, x, rois, 7, 1 / 32, grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_windows_with_floating_point_bin_edges_match_torchvision(dtype):
    # At spatial_scale 1, windows of 57 and 114 cells (float32) or 58 (float64) split into 7 bins
    # differently in floating point (torchvision's edges) and in exact integers: match the former.
    n = 57 if dtype == torch.float32 else 58
    bin_size = torch.tensor(float(n), dtype=dtype) / 7
    exact = [(j * n // 7, -(-(j + 1) * n // 7)) for j in range(7)]
    floating = [(int(torch.floor(j * bin_size)), int(torch.ceil((j + 1) * bin_size))) for j in range(7)]
    assert floating != exact  # the case this test is about exists in this precision
    x = torch.randn(1, 3, 60, 130, dtype=dtype)
    rois = torch.tensor([[0, 0, 0, 56, 10], [0, 3, 1, 116, 58], [0, 2, 2, 20, 20], [0, 100, 40, 156, 70]], dtype=dtype)
    grad = torch.randn(4, 3, 7, 7, dtype=dtype)
    torch.testing.assert_close(roi_pool(x, rois, 7, 1.0), torchvision.ops.roi_pool(x, rois, 7, 1.0))
    torch.testing.assert_close(_grad(roi_pool, x, rois, 7, 1.0, grad), _grad(torchvision.ops.roi_pool, x, rois, 7, 1.0, grad))


def test_shared_and_large_rectangles_match_torchvision():
    # Many RoIs share bins (the same box twice, boxes one cell apart) and some bins hold more than
    # 255 cells (the winners' index no longer fits a byte); ties too, on a ReLU'd integer map.
    x = torch.randint(-2, 3, (2, 3, 40, 60)).double().relu()
    boxes = [[0, 0, 0, 59, 39], [0, 0, 0, 59, 39], [1, 5, 5, 45, 30], [1, 6, 5, 46, 30], [0, 10, 2, 12, 3], [1, 0, 0, 80, 80]]
    rois = torch.tensor(boxes, dtype=torch.float64)
    for k in (2, (3, 2), 7):
        kh, kw = pair(k)
        grad = torch.rand(len(rois), 3, kh, kw, dtype=torch.float64)
        assert torch.equal(roi_pool(x, rois, k, 1.0), torchvision.ops.roi_pool(x, rois, k, 1.0))
        torch.testing.assert_close(_grad(roi_pool, x, rois, k, 1.0, grad), _grad(torchvision.ops.roi_pool, x, rois, k, 1.0, grad))


def test_bins_of_255_256_and_257_cells_send_tied_gradients_to_the_first_like_torchvision():
    # The winner's rank within a bin counts down from its cell count s: at s = 256 it no longer fits a
    # byte (the index type's edge). Ties at the first cell and a later one: the first wins.
    for h, w in ((15, 17), (16, 16), (1, 256), (257, 1)):
        x = torch.zeros(1, 1, h, w, dtype=torch.float64)
        x.view(-1)[[0, 5, -1]] = 2.0
        rois = torch.tensor([[0, 0, 0, w - 1, h - 1]], dtype=torch.float64)
        grad = torch.ones(1, 1, 1, 1, dtype=torch.float64)
        ours = _grad(roi_pool, x, rois, 1, 1.0, grad)
        assert torch.equal(ours, _grad(torchvision.ops.roi_pool, x, rois, 1, 1.0, grad)), (h, w)
        assert ours.view(-1)[0] == 1 and ours.sum() == 1, (h, w)


@pytest.mark.parametrize("chunk", [1, 40, 333])
def test_work_split_into_chunks_gives_the_same_numbers(monkeypatch, chunk):
    # The CPU path bounds its temporaries by working through rectangles and RoIs in chunks of about
    # _CPU_CHUNK_ELEMENTS elements; the tests' maps fit one chunk, so shrink it: one rectangle or RoI
    # at a time, a few, and chunks that end inside a group.
    import importlib

    module = importlib.import_module("detector.ops.roi_pool")  # (the package's `roi_pool` is the function)
    x = torch.randint(-2, 3, (2, 4, 18, 25)).double().relu()  # ties too
    rois = _rois(40, torch.float64, seed=5)
    grad = torch.rand(40, 4, 3, 3, dtype=torch.float64)
    monkeypatch.setattr(module, "_CPU_CHUNK_ELEMENTS", chunk)
    assert torch.equal(roi_pool(x, rois, 3, 1 / 32), torchvision.ops.roi_pool(x, rois, 3, 1 / 32))
    torch.testing.assert_close(_grad(roi_pool, x, rois, 3, 1 / 32, grad), _grad(torchvision.ops.roi_pool, x, rois, 3, 1 / 32, grad))


def test_plus_inf_cells_and_boxes_off_the_map_are_torchvisions():
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64)
    x[0, 1, 2, 3] = float("inf")  # the maximum of every bin that holds it, as in torchvision
    rois = torch.tensor([[0, 0.0, 0, 6, 5], [1, 50, 50, 60, 60], [0, -30, -30, -10, -10]], dtype=torch.float64)
    for k in (1, 2):
        ours = roi_pool(x, rois, k, 1.0)
        assert torch.equal(ours, torchvision.ops.roi_pool(x, rois, k, 1.0))
        assert ours[0, 1].max() == float("inf") and not ours[1:].any()  # off the map: every bin empty, 0
        grad = torch.rand(3, 2, k, k, dtype=torch.float64)
        torch.testing.assert_close(_grad(roi_pool, x, rois, k, 1.0, grad), _grad(torchvision.ops.roi_pool, x, rois, k, 1.0, grad))
    # Only boxes off the map: no rectangle at all.
    off = rois[1:]
    assert torch.equal(_grad(roi_pool, x, off, 2, 1.0, torch.ones(2, 2, 2, 2, dtype=torch.float64)), torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_corners_just_below_a_half_round_like_c(dtype):
    # floor(|x| + 0.5) rounds the float just below 0.5 up to 1; C's round (torchvision's) gives 0.
    below_half = torch.nextafter(torch.tensor(0.5, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()
    x = torch.arange(16.0, dtype=dtype).view(1, 1, 4, 4)
    for scale in (1.0, 1 / 16):
        rois = torch.tensor([[0, below_half / scale, 0, 3 / scale, 3 / scale]], dtype=dtype)
        assert torch.equal(roi_pool(x, rois, (1, 4), scale), torchvision.ops.roi_pool(x, rois, (1, 4), scale))


def test_nan_and_minus_inf_cells_follow_torchvisions_scan():
    # torchvision's max starts at -FLT_MAX and a cell wins only if strictly greater: a NaN never
    # wins, and a bin of -inf cells reads -FLT_MAX and sends no gradient.
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    x[0, 0, :3, :3] = float("nan")
    x[0, 1, :2, :] = float("-inf")
    x[0, 0, 4, 4] = float("nan")
    rois = torch.tensor([[0, 0.0, 0, 5, 5], [0, 0, 0, 2, 1], [0, 3, 3, 5, 5]], dtype=torch.float64)
    for k in (1, 2, 3):
        ours, theirs = roi_pool(x, rois, k, 1.0), torchvision.ops.roi_pool(x, rois, k, 1.0)
        torch.testing.assert_close(ours, theirs)
        assert not ours.isnan().any()
        grad = torch.rand(3, 2, k, k, dtype=torch.float64)
        torch.testing.assert_close(_grad(roi_pool, x, rois, k, 1.0, grad), _grad(torchvision.ops.roi_pool, x, rois, k, 1.0, grad))


def test_no_winners_are_kept_without_a_gradient_to_take():
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    rois = torch.tensor([[0, 0.0, 0, 7, 7]])
    with torch.no_grad():
        out = roi_pool(x, rois, 2, 1.0)
    assert out.grad_fn is None
    torch.testing.assert_close(out, torchvision.ops.roi_pool(x.detach(), rois, 2, 1.0))


def test_gradcheck_round_and_floor():
    x = torch.randn(2, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.0, 5.0, 60.0, 40.0], [1, -10.0, 20.0, 30.0, 90.0], [1, 70.0, 30.0, 120.0, 80.0]], dtype=torch.float64)
    for q in ("round", "floor"):
        assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (3, 2), 1 / 8, quantization=q), (x,))


def test_bad_batch_index_is_one_clear_error():
    with pytest.raises(ValueError, match="batch indices must lie in"):
        roi_pool(torch.randn(1, 2, 5, 5), torch.tensor([[1.0, 0, 0, 8, 8]]), 2, 0.5)


def test_the_module_is_the_function_with_its_own_settings():
    """``RoIPool`` passes its scale and its quantization on, and its default is torchvision's round rule."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    boxes = torch.tensor([[0, 1.3, 2.6, 13.7, 15.2], [1, 3.5, 0.5, 17.5, 11.5]], dtype=torch.float64)
    # Each setting changes the result on these boxes, so a module that dropped one could not pass.
    assert not torch.equal(roi_pool(x, boxes, (2, 3), 0.5), roi_pool(x, boxes, (2, 3), 1.0))
    assert not torch.equal(roi_pool(x, boxes, (2, 3), 0.5, quantization="round"),
                           roi_pool(x, boxes, (2, 3), 0.5, quantization="floor"))
    for quantization in ("round", "floor"):
        module = RoIPool(output_size=(2, 3), spatial_scale=0.5, quantization=quantization)
        assert torch.equal(module(x, boxes), roi_pool(x, boxes, (2, 3), 0.5, quantization=quantization))
    default = RoIPool(output_size=(2, 3), spatial_scale=0.5)
    assert torch.equal(default(x, boxes), torchvision.ops.roi_pool(x, boxes, (2, 3), 0.5))


def test_the_function_defaults_to_scale_one_and_its_errors_name_the_values():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 12)
    boxes = torch.tensor([[0, 1.3, 2.6, 7.7, 9.2], [1, 3.5, 0.5, 11.5, 8.5]])
    assert torch.equal(roi_pool(x, boxes, 2), roi_pool(x, boxes, 2, 1.0))
    assert not torch.equal(roi_pool(x, boxes, 2), roi_pool(x, boxes, 2, 0.5))
    bad = torch.tensor([[1, 0.0, 0.0, 4.0, 4.0], [2, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\] \(the input holds 2 images\), got 1\.\.2$"):
        roi_pool(x, bad, 2)
    with pytest.raises(ValueError, match=r"^quantization must be one of \('round', 'floor'\), got 'ceil'$"):
        roi_pool(x, boxes, 2, quantization="ceil")
