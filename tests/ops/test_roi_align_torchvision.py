"""detector.ops.roi_align_torchvision (the CUDA path) against the gather kernel, on the CPU.

torchvision's kernel runs on the CPU too, so every mode of the CUDA path is checked here, values and
gradients, against the CPU's gather kernel (itself checked against torchvision and slow references in
test_roi_align.py); test_roi_align.py's CUDA test compares the two devices when a GPU is present.
"""

import importlib
import itertools

import pytest
import torch

from detector.ops.roi_align import _roi_align, uses_torchvision_kernel
from detector.ops.roi_align_torchvision import roi_align_by_torchvision

from tests.ops.test_roi_align import _random_rois

CASES = list(itertools.product(["avg", "max", "samples"], ["centered", "interior"], [False, True], [1, 2, 3]))


@pytest.mark.parametrize("mode,layout,aligned,sampling_ratio", CASES)
def test_every_fixed_grid_mode_equals_the_gather_kernel(mode, layout, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(sampling_ratio * 7 + aligned)
    x = torch.randn(2, 6, 18, 25, generator=g, dtype=torch.float64, requires_grad=True)
    # Zero-size, sub-cell, wholly outside and border-crossing boxes among them (_random_rois).
    rois = _random_rois(30, 2, torch.float64, sampling_ratio)
    ours = _roi_align(x, rois, (7, 5), 1 / 32, sampling_ratio, aligned, mode, layout)
    theirs = roi_align_by_torchvision(x, rois, (7, 5), 1 / 32, sampling_ratio, aligned, mode, layout)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-10)
    up = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, x, up)
    (g_theirs,) = torch.autograd.grad(theirs, x, up)
    torch.testing.assert_close(g_theirs, g_ours, rtol=1e-10, atol=1e-10)


def test_adaptive_avg_and_half_precision_maps():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 18, 25, generator=g)
    rois = _random_rois(20, 2, torch.float32, 3)
    adaptive = roi_align_by_torchvision(x, rois, (7, 7), 1 / 32, 0, True, "avg", "centered")
    torch.testing.assert_close(adaptive, _roi_align(x, rois, (7, 7), 1 / 32, 0, True, "avg", "centered"))
    # A bf16 map is pooled in float32 (its boxes stay float32) and comes back in bf16, in every mode.
    for mode, layout in itertools.product(["avg", "max", "samples"], ["centered", "interior"]):
        half = roi_align_by_torchvision(x.bfloat16(), rois, (7, 7), 1 / 32, 2, True, mode, layout)
        assert half.dtype == torch.bfloat16, (mode, layout)
        full = roi_align_by_torchvision(x.bfloat16().float(), rois, (7, 7), 1 / 32, 2, True, mode, layout)
        assert torch.equal(half, full.bfloat16()), (mode, layout)
    with pytest.raises(ValueError, match="^only avg with centered samples has an adaptive sampling ratio on this path$"):
        roi_align_by_torchvision(x, rois, (7, 7), 1 / 32, 0, True, "max", "centered")


def test_cuda_runs_torchvision_where_it_can_and_the_cpu_never():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for mode, layout in itertools.product(["avg", "max", "samples"], ["centered", "interior"]):
        assert uses_torchvision_kernel(cuda, 2, mode, layout)
        assert not uses_torchvision_kernel(cpu, 2, mode, layout)
        # An adaptive grid differs per RoI: only torchvision's own mode takes it.
        assert uses_torchvision_kernel(cuda, 0, mode, layout) == (mode == "avg" and layout == "centered")
        assert uses_torchvision_kernel(cuda, -1, mode, layout) == (mode == "avg" and layout == "centered")


def test_roi_align_hands_its_own_arguments_to_the_cuda_path(monkeypatch):
    """The dispatch in roi_align, run on the CPU by deciding as CUDA would: every argument reaches the path."""
    module = importlib.import_module("detector.ops.roi_align")  # the package's roi_align is the function

    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 18, 25, generator=g, dtype=torch.float64)
    rois = _random_rois(12, 2, torch.float64, 2)
    cases = [*itertools.product(["avg", "max", "samples"], ["centered", "interior"], [False, True], [1, 2]),
             ("avg", "centered", True, 0), ("max", "centered", True, 0)]
    gather = {c: _roi_align(x, rois, (7, 5), 1 / 16, c[3], c[2], c[0], c[1]) for c in cases}
    taken = []
    real = module.uses_torchvision_kernel

    def as_on_cuda(device, sampling_ratio, mode, sample_layout):
        assert device == x.device
        decision = real(torch.device("cuda"), sampling_ratio, mode, sample_layout)
        taken.append(decision)
        return decision

    monkeypatch.setattr(module, "uses_torchvision_kernel", as_on_cuda)
    for mode, layout, aligned, ratio in cases:
        out = _roi_align(x, rois, (7, 5), 1 / 16, ratio, aligned, mode, layout)
        torch.testing.assert_close(out, gather[mode, layout, aligned, ratio], rtol=1e-10, atol=1e-10)
    # Every fixed grid and torchvision's own adaptive mode took the torchvision path; adaptive max did not.
    assert taken == [True] * (len(cases) - 1) + [False]
