"""The training loop: same seed -> the same losses; different seed -> different losses; NaN stops."""

import math

import pytest
import torch

from conftest import LogLines, tiny_model
from detector.data import CocoDetection, build_detection_loader, build_train_augmentation, generate_synthetic_coco
from detector.engine import MetricLogger, TrainState, build_lr_scheduler, build_optimizer, train_loop
from detector.utils.env import seed_all


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step, value))

    def flush(self):
        pass


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return generate_synthetic_coco(
        tmp_path_factory.mktemp("syn"), split="train", num_images=6, seed=0,
        min_image_size=96, max_image_size=128,
    )


def run(split, seed, iters=3):
    seed_all(seed)
    dataset = CocoDetection(images=split[0], annotations=split[1], transforms=build_train_augmentation(hflip_prob=0.5))
    model = tiny_model(num_classes=dataset.num_classes)
    opt = build_optimizer(model, base_lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = build_lr_scheduler(opt, max_iter=iters, warmup_iters=1, warmup_factor=0.1)
    loader = build_detection_loader(dataset, batch_size=2, shuffle=True, num_workers=0, seed=seed)
    writer = RecordingWriter()
    train_loop(model=model, state=TrainState(model=model, optimizer=opt, scheduler=sched), data_loader=loader,
               max_iter=iters, device=torch.device("cpu"), hooks=[MetricLogger(period=1, writer=writer, progress=False)])
    return [(t, s, v) for t, s, v in writer.scalars if t.startswith("train/loss")]


def test_same_seed_same_losses(split):
    a, b = run(split, 0), run(split, 0)
    assert len(a) == 3 * 5  # 4 losses + total, every iteration
    assert a == b


def test_different_seed_different_losses(split):
    assert run(split, 0) != run(split, 1)


def test_non_finite_loss_stops_with_a_clear_message(split):
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, images, targets):
            return {"loss_roi_cls": self.w * math.inf}

    model = Exploding()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=2, warmup_iters=0, warmup_factor=1.0)
    loader = [([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])]
    from detector.engine import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"iteration 1: loss_roi_cls=inf is not finite.*base_lr.*last good checkpoint: none"):
        train_loop(model=model, state=TrainState(model=model, optimizer=opt, scheduler=sched), data_loader=loader,
                   max_iter=2, device=torch.device("cpu"))


def test_periodic_evaluator_runs_on_its_period_and_at_the_end():
    from types import SimpleNamespace

    from detector.engine import PeriodicEvaluator

    calls, writer = [], RecordingWriter()
    hook = PeriodicEvaluator(period=5, evaluate=lambda it: calls.append(it) or {"AP": it / 100, "note": "x"}, writer=writer)
    for done in range(1, 11):
        loop = SimpleNamespace(done=done, final=done == 10, metrics=None, max_iter=10)
        hook.after_step(loop)
    assert calls == [5]  # iteration 10 is the last: after_train evaluates it, once
    hook.after_train(loop)
    assert calls == [5, 10] and loop.metrics == {"AP": 0.1, "note": "x"}
    assert writer.scalars == [("val/AP", 5, 0.05), ("val/AP", 10, 0.1)]
    only_end = PeriodicEvaluator(period=0, evaluate=lambda it: calls.append(it) or {}, writer=None)
    only_end.after_step(SimpleNamespace(done=5, final=False, metrics=None))
    assert calls == [5, 10]
    every = PeriodicEvaluator(period=1, evaluate=lambda it: calls.append(it) or {}, writer=None)
    every.after_step(SimpleNamespace(done=11, final=False, metrics=None))
    assert calls == [5, 10, 11]


def test_periodic_checkpointer_saves_on_its_period_at_the_end_and_on_a_stop():
    from pathlib import Path
    from types import SimpleNamespace

    from detector.engine import PeriodicCheckpointer

    saved = []
    hook = PeriodicCheckpointer(period=3, save=lambda it: saved.append(it) or Path(f"model_{it:07d}.pth"))
    for done in range(1, 7):
        loop = SimpleNamespace(done=done, final=done == 6, last_checkpoint=None, max_iter=6)
        hook.after_step(loop)
    assert saved == [3]  # iteration 6 is the last: the final checkpoint is after_train's
    hook.after_train(loop)
    assert saved == [3, 6] and loop.last_checkpoint == Path("model_0000006.pth")
    stopped = SimpleNamespace(done=4, final=False, last_checkpoint=None)
    assert hook.on_stop(stopped) == Path("model_0000004.pth") and stopped.last_checkpoint == Path("model_0000004.pth")
    every = PeriodicCheckpointer(period=1, save=lambda it: saved.append(it) or Path("x"))
    every.after_step(SimpleNamespace(done=2, final=False, last_checkpoint=None))
    assert saved[-1] == 2
    never = PeriodicCheckpointer(period=0, save=lambda it: saved.append(it) or Path("x"))
    count = len(saved)
    never.after_step(SimpleNamespace(done=2, final=False, last_checkpoint=None))
    assert len(saved) == count


def test_check_finite_names_every_bad_parameter_and_buffer():
    from detector.engine import check_finite

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert check_finite(model) == []
    with torch.no_grad():
        model[0].bias[1] = float("nan")
        model[1].running_var[0] = float("inf")
    model[1].num_batches_tracked.fill_(7)  # an integer buffer: never "non-finite"
    assert check_finite(model) == ["0.bias", "1.running_var"]


def test_log_metrics_line_and_scalars():
    from detector.engine.hooks import log_metrics

    writer = RecordingWriter()
    with LogLines("detector.engine.trainer") as lines:
        out = log_metrics({"AP": 0.25, "AP50": 0.5, "count": 3, "nan": float("nan"), "name": "x"}, writer, 40)
    assert out["AP"] == 0.25
    assert lines.messages == ["eval at iter 40: AP 0.2500  AP50 0.5000  nan nan"]
    assert writer.scalars == [("val/AP", 40, 0.25), ("val/AP50", 40, 0.5), ("val/count", 40, 3)]


def test_the_progress_bar_counts_a_resumed_run_and_the_eta_reads_as_hours_minutes_seconds():
    from types import SimpleNamespace

    from detector.engine.hooks import _fmt_seconds

    assert MetricLogger().period == 20 and MetricLogger().progress  # the documented defaults
    for progress in (True, False):
        hook = MetricLogger(period=2, progress=progress)
        for done in (3, 4, 5):  # a run resumed at iteration 2 of 5
            hook.after_step(SimpleNamespace(done=done, max_iter=5, start_iter=2, applied=True,
                                            values={"loss_rpn_cls": 0.25, "loss": 1.0}, final=done == 5, lr=0.1, skipped=0))
        assert (hook._bar.total, hook._bar.disable) == (5, not progress)
        assert not progress or hook._bar.postfix == "loss=1.000, lr=0.1000, rpn_cls=0.250"
        assert not progress or hook._bar.desc == "train"  # (a disabled bar keeps no description)
        assert hook._bar.n == (5 if progress else 2)  # from the resumed iteration; a disabled bar does not count
        hook.close()
    assert [_fmt_seconds(s) for s in (0, 59, 61, 3599, 3725, 3 * 3600 + 59 * 60 + 59, 86400)] == [
        "0:00:00", "0:00:59", "0:01:01", "0:59:59", "1:02:05", "3:59:59", "24:00:00"]


def test_metric_logger_lines_scalars_and_eta_on_a_clock(monkeypatch):
    """Hand-fed steps of a run resumed at iteration 4 of 9, logging every 2, one step skipped, a fake clock."""
    from types import SimpleNamespace

    from detector.engine import hooks as hooks_module

    clock = iter([100.0, 104.0, 110.0, 112.5])  # the first step (t0), then each logged one
    monkeypatch.setattr(hooks_module.time, "perf_counter", lambda: next(clock))

    writer = RecordingWriter()
    hook = MetricLogger(period=2, writer=writer, progress=False)
    steps = {5: 1.0, 6: 3.0, 7: None, 8: 5.0, 9: 7.0}  # None: a non-finite step, skipped
    with LogLines("detector.engine.trainer") as lines:
        for done, loss in steps.items():
            values = {} if loss is None else {"loss_a": loss / 2, "loss": loss}
            hook.after_step(SimpleNamespace(done=done, max_iter=9, start_iter=4, applied=loss is not None, values=values,
                                            final=done == 9, lr=0.1 if done < 8 else 0.01, skipped=int(done >= 7)))
    hook.close()
    # Each line: the mean of the last 2 applied steps; s/it and eta from the clock (elapsed / steps since the resume).
    assert lines.messages == [
        "iter 6/9  lr 0.10000  loss_a 1.0000  loss 2.0000  (2.00 s/it, eta 0:00:06)",
        "iter 8/9  lr 0.01000  loss_a 2.0000  loss 4.0000  (2.50 s/it, eta 0:00:02)",
        "iter 9/9  lr 0.01000  loss_a 3.0000  loss 6.0000  (2.50 s/it, eta 0:00:00)",  # the last step, off the period
    ]
    assert writer.scalars == [
        ("train/loss_a", 6, 1.0), ("train/loss", 6, 2.0), ("train/lr", 6, 0.1),
        ("train/nonfinite_skips", 7, 1),
        ("train/loss_a", 8, 2.0), ("train/loss", 8, 4.0), ("train/lr", 8, 0.01),
        ("train/loss_a", 9, 3.0), ("train/loss", 9, 6.0), ("train/lr", 9, 0.01),
    ]
    assert hook.summary == {"loss_a": 3.0, "loss": 6.0}


def test_a_loader_without_a_batch_is_one_line():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=2, warmup_iters=0, warmup_factor=1.0)
    with pytest.raises(ValueError, match=r"^the training data loader yields no batch \(fewer images than the batch size\?\)$"):
        train_loop(model=model, state=TrainState(model=model, optimizer=opt, scheduler=sched), data_loader=[],
                   max_iter=2, device=torch.device("cpu"))
