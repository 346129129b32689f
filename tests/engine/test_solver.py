import math

import pytest
import torch

from detector.engine import WarmupSchedule, build_lr_scheduler, build_optimizer


def test_warmup_then_cosine():
    s = WarmupSchedule(max_iter=100, warmup_iters=10, warmup_factor=0.001, schedule="cosine")
    assert s(0) == pytest.approx(0.001)
    assert s(5) == pytest.approx((0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert s(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert s(50) == pytest.approx(0.5)
    assert s(100) == pytest.approx(0.0)


def test_step_schedule():
    s = WarmupSchedule(max_iter=100, warmup_iters=0, warmup_factor=1.0, schedule="step", steps=[30, 60], gamma=0.1)
    assert [s(0), s(29), s(30), s(59), s(60), s(99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_scheduler_drives_optimizer_lr_per_iteration():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = build_optimizer(model, base_lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = build_lr_scheduler(opt, max_iter=10, warmup_iters=2, warmup_factor=0.5, schedule="step", steps=[5])
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.1, 0.01])


def test_no_weight_decay_on_norm_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = build_optimizer(model, base_lr=0.1, momentum=0.9, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and len(decay["params"]) == 1  # the conv weight
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3  # conv bias, bn w/b
    assert decay["params"][0] is model[0].weight
    assert decay["momentum"] == no_decay["momentum"] == 0.9 and decay["lr"] == 0.1
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    # A frozen parameter is left out, and the module's other parameters still count.
    model[0].weight.requires_grad_(False)
    decay, no_decay = build_optimizer(model, base_lr=0.1, momentum=0.9, weight_decay=1e-4).param_groups
    assert decay["params"] == [] and any(p is model[0].bias for p in no_decay["params"])


def test_backbone_lr_factor_gives_the_backbone_its_own_groups():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
            self.head = torch.nn.Linear(2, 3)

    net = Net()
    # Factor 1: the two groups of every earlier checkpoint, the backbone inside them.
    assert len(build_optimizer(net, base_lr=0.1, momentum=0.9, weight_decay=1e-4).param_groups) == 2
    opt = build_optimizer(net, base_lr=0.01, momentum=0.9, weight_decay=1e-4, backbone_lr_factor=4.0)
    head_decay, head_no_decay, bb_decay, bb_no_decay = opt.param_groups
    assert head_decay["params"] == [net.head.weight] and head_no_decay["params"] == [net.head.bias]
    assert bb_decay["params"] == [net.backbone[0].weight]
    assert {id(p) for p in bb_no_decay["params"]} == {id(net.backbone[0].bias), id(net.backbone[1].weight),
                                                       id(net.backbone[1].bias)}
    assert head_decay["lr"] == head_no_decay["lr"] == pytest.approx(0.01)
    assert bb_decay["lr"] == bb_no_decay["lr"] == pytest.approx(0.04)
    assert bb_decay["weight_decay"] == 1e-4 and bb_no_decay["weight_decay"] == 0.0
    # The schedule scales each group from its own lr (warmup factor 0.5 at iteration 0).
    build_lr_scheduler(opt, max_iter=10, warmup_iters=2, warmup_factor=0.5, schedule="step", steps=[5])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.005, 0.02, 0.02])
    with pytest.raises(ValueError, match="backbone_lr_factor"):
        build_optimizer(net, base_lr=0.1, momentum=0.9, weight_decay=0.0, backbone_lr_factor=0.0)


def test_start_iter_fast_forwards_a_fresh_schedule():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, base_lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = build_lr_scheduler(opt, max_iter=100, warmup_iters=0, warmup_factor=1.0, schedule="cosine", start_iter=50)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05) and sched.get_last_lr() == [pytest.approx(0.05)] * 2
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 51 / 100)))
    # Resuming at iteration 1, inside the warmup: the lr of iteration 1, not of 0.
    opt = build_optimizer(torch.nn.Linear(2, 2), base_lr=0.1, momentum=0.9, weight_decay=0.0)
    build_lr_scheduler(opt, max_iter=100, warmup_iters=10, warmup_factor=0.1, schedule="step", steps=[80], start_iter=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (0.1 * 0.9 + 0.1))


def test_scaled_lr_linear_in_batch_and_power_of_width():
    from detector.engine import scaled_lr

    ref = dict(reference_lr=0.04, reference_batch=4, reference_width=0.125)
    assert scaled_lr(**ref, ims_per_batch=4, width=0.125, width_exponent=1.0) == pytest.approx(0.04)
    assert scaled_lr(**ref, ims_per_batch=8, width=0.125, width_exponent=1.0) == pytest.approx(0.08)
    assert scaled_lr(**ref, ims_per_batch=2, width=0.125, width_exponent=1.0) == pytest.approx(0.02)
    # Twice the width at exponent 1 halves the lr; exponent 0.5 divides it by sqrt(2); 0 ignores width.
    assert scaled_lr(**ref, ims_per_batch=4, width=0.25, width_exponent=1.0) == pytest.approx(0.02)
    assert scaled_lr(**ref, ims_per_batch=4, width=0.25, width_exponent=0.5) == pytest.approx(0.04 / math.sqrt(2))
    assert scaled_lr(**ref, ims_per_batch=4, width=0.25, width_exponent=0.0) == pytest.approx(0.04)
    # Batch and width compose multiplicatively.
    assert scaled_lr(**ref, ims_per_batch=16, width=0.5, width_exponent=1.0) == pytest.approx(0.04 * 4 / 4)
    with pytest.raises(ValueError, match="ims_per_batch"):
        scaled_lr(**ref, ims_per_batch=0, width=0.125)
    # Each bad input is named in the message; without a width the rule is the linear scaling rule alone.
    good = dict(reference_lr=0.04, ims_per_batch=4, reference_batch=4, width=0.5, reference_width=0.125)
    for name in good:
        with pytest.raises(ValueError, match=rf"scaled_lr: {name} must be > 0, got -1"):
            scaled_lr(**{**good, name: -1})
    for name in ("reference_lr", "width", "reference_width", "width_exponent"):  # NaN or inf: refused, not an lr
        for bad in (math.nan, math.inf):
            with pytest.raises(ValueError, match=rf"scaled_lr: {name} must be (finite|> 0), got {bad!r}"):
                scaled_lr(**{**good, name: bad})
    assert scaled_lr(reference_lr=0.04, ims_per_batch=8, reference_batch=4) == pytest.approx(0.08)
    assert scaled_lr(reference_lr=0.04, ims_per_batch=4, reference_batch=4, width=0.5) == pytest.approx(0.04)
    # The cap: a narrower network than the reference keeps the reference's lr; a wider one is unaffected.
    assert scaled_lr(**ref, ims_per_batch=4, width=0.0625, width_exponent=1.0) == pytest.approx(0.08)
    assert scaled_lr(**ref, ims_per_batch=4, width=0.0625, width_exponent=1.0, max_width_factor=1.0) == pytest.approx(0.04)
    assert scaled_lr(**ref, ims_per_batch=8, width=0.0625, width_exponent=1.0, max_width_factor=1.5) == pytest.approx(0.12)
    assert scaled_lr(**ref, ims_per_batch=4, width=0.25, width_exponent=1.0, max_width_factor=1.0) == pytest.approx(0.02)
    with pytest.raises(ValueError, match=r"scaled_lr: max_width_factor must be > 0, got 0"):
        scaled_lr(**ref, ims_per_batch=4, width=0.25, max_width_factor=0)
    # The batch cap: a larger batch than the reference keeps the reference's lr; a smaller one stays
    # linear; the two caps compose (each caps its own term).
    assert scaled_lr(**ref, ims_per_batch=8, width=0.125, width_exponent=1.0, max_batch_factor=1.0) == pytest.approx(0.04)
    assert scaled_lr(**ref, ims_per_batch=2, width=0.125, width_exponent=1.0, max_batch_factor=1.0) == pytest.approx(0.02)
    assert scaled_lr(**ref, ims_per_batch=16, width=0.125, width_exponent=1.0, max_batch_factor=2.0) == pytest.approx(0.08)
    assert scaled_lr(**ref, ims_per_batch=8, width=0.25, width_exponent=1.0, max_batch_factor=1.0) == pytest.approx(0.02)
    assert scaled_lr(**ref, ims_per_batch=8, width=0.0625, width_exponent=1.0, max_width_factor=1.0,
                     max_batch_factor=1.0) == pytest.approx(0.04)
    with pytest.raises(ValueError, match=r"scaled_lr: max_batch_factor must be > 0, got 0"):
        scaled_lr(**ref, ims_per_batch=4, width=0.25, max_batch_factor=0)
    # The floor: a wider network's lr falls no lower than min_width_factor times the reference's.
    assert scaled_lr(**ref, ims_per_batch=4, width=0.5, width_exponent=1.0, min_width_factor=0.5) == pytest.approx(0.02)
    assert scaled_lr(**ref, ims_per_batch=4, width=0.25, width_exponent=1.0, min_width_factor=0.25) == pytest.approx(0.02)
    assert scaled_lr(**ref, ims_per_batch=2, width=1.0, width_exponent=1.0, min_width_factor=0.5) == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"scaled_lr: min_width_factor must be >= 0 and <= max_width_factor \(1.0\), got 2"):
        scaled_lr(**ref, ims_per_batch=4, width=0.25, max_width_factor=1.0, min_width_factor=2)
    # The width defaults are 1.0 (the real VGG16) on both sides.
    assert scaled_lr(reference_lr=0.04, ims_per_batch=4, reference_batch=4, width=0.5, width_exponent=1.0) == pytest.approx(0.08)
    assert scaled_lr(reference_lr=0.04, ims_per_batch=4, reference_batch=4, reference_width=0.5, width_exponent=1.0) == pytest.approx(0.02)


def test_schedule_default_and_unknown_name():
    from detector.engine.solver import WarmupSchedule

    assert WarmupSchedule(max_iter=10, warmup_iters=0, warmup_factor=1.0)(5) == pytest.approx(0.5)  # cosine
    with pytest.raises(ValueError, match=r"schedule must be 'cosine' or 'step', got 'linear'"):
        WarmupSchedule(max_iter=10, warmup_iters=0, warmup_factor=1.0, schedule="linear")
