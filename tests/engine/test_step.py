"""One training step (detector.engine.step.train_step) on hand-made losses: its defaults, autocast,
the reduced numbers deciding a non-finite step, and the messages."""

import math

import pytest
import torch

from detector.engine import NonFiniteError
from detector.engine.step import train_step

IMAGES = [torch.zeros(3, 8, 8)]
TARGETS = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


class Losses(torch.nn.Module):
    """Loss terms ``scale_i * w``, so the gradient of w is the sum of the scales; records autocast."""

    def __init__(self, **scales):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.scales = scales

    def forward(self, images, targets):
        self.autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return {k: self.w * v for k, v in self.scales.items()}


def _step(model, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_step(model, IMAGES, TARGETS, opt, iteration=kwargs.pop("iteration", 0), **kwargs)


def test_defaults_neither_clip_nor_skip_nor_autocast():
    model = Losses(loss_a=60.0, loss_b=40.0)
    values, applied = _step(model)
    assert applied and values == {"loss_a": 60.0, "loss_b": 40.0, "loss": 100.0}
    assert model.w.item() == pytest.approx(1 - 0.1 * 100)  # a gradient norm of 100, not clipped
    assert model.autocast is None
    with pytest.raises(NonFiniteError):
        _step(Losses(loss_a=math.nan))  # stop, by default
    clipped = Losses(loss_a=100.0)
    _step(clipped, clip_grad_norm=10.0)
    assert clipped.w.item() == pytest.approx(1 - 0.1 * 10, abs=1e-6)  # clipped to a norm of 10


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_forward_runs_under_the_autocast_dtype_asked(dtype):
    model = Losses(loss_a=1.0)
    _step(model, amp_dtype=dtype)
    assert model.autocast == dtype


def test_the_reduced_numbers_decide_and_are_returned():
    # Every rank decides on the mean over ranks: a rank whose own loss is finite stops (or skips)
    # with the others when the mean is not.
    model = Losses(loss_a=1.0)
    with pytest.raises(NonFiniteError, match=r"^iteration 5: loss_a=nan is not finite"):
        _step(model, iteration=4, reduce=lambda v: {**v, "loss_a": math.nan, "loss": math.nan})
    values, applied = _step(model, reduce=lambda v: {k: x / 2 for k, x in v.items()})
    assert applied and values == {"loss_a": 0.5, "loss": 0.5} and model.w.item() == pytest.approx(0.9)
    values, applied = _step(model, nonfinite="skip", reduce=lambda v: {**v, "loss": math.inf})
    assert not applied and values["loss"] == math.inf and model.w.item() == pytest.approx(0.9)
    assert model.w.grad is None  # the previous step's gradient is released, not left for the next one


def test_the_message_names_each_bad_term_or_else_the_total():
    with pytest.raises(NonFiniteError, match=r"^iteration 3: loss_a=nan, loss_b=inf is not finite; lower solver\.base_lr, "
                                             r"raise solver\.warmup_iters, or set solver\.nonfinite=skip$"):
        _step(Losses(loss_a=math.nan, loss_b=math.inf, loss_c=1.0), iteration=2)
    # Each term finite, their float32 sum not.
    with pytest.raises(NonFiniteError, match=r"^iteration 1: loss=inf is not finite; "):
        _step(Losses(loss_a=3e38, loss_b=3e38))
