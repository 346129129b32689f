"""The moving average of the weights: its arithmetic against a hand-written EMA, its place in the loop
and the checkpoint, and an exact resume with it on."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from detector.engine import AverageWeights, LoopInfo, TrainState, build_weight_average
from detector.engine.ema import ema_decay_at


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).train()


def test_the_decay_ramps_in_then_holds():
    assert ema_decay_at(0.99, 0) == pytest.approx(0.1)  # TensorFlow's (1 + t) / (10 + t)
    assert ema_decay_at(0.99, 10) == pytest.approx(11 / 20)
    assert ema_decay_at(0.99, 10_000) == 0.99
    with pytest.raises(ValueError, match="ema_decay"):
        build_weight_average(nn.Linear(1, 1), decay=1.0)


def test_the_average_equals_a_hand_written_ema_of_weights_and_buffers():
    net = _net()
    net(torch.randn(4, 2, 6, 6))  # materialise the lazy layer
    average = build_weight_average(net, decay=0.6)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    reference: dict[str, torch.Tensor] = {}
    for t in range(6):
        optimizer.zero_grad()
        net(torch.randn(4, 2, 6, 6)).square().mean().backward()  # also moves BatchNorm's running statistics
        optimizer.step()
        average.update_parameters(net)
        for name, value in [*net.named_parameters(), *net.named_buffers()]:
            value = value.detach().clone()
            if t == 0 or not value.is_floating_point():
                reference[name] = value  # the first update copies; counts are copied
            else:
                d = min(0.6, (1 + t) / (10 + t))
                reference[name] = d * reference[name] + (1 - d) * value
    state = average.module.state_dict()
    for name, value in reference.items():
        torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert int(average.n_averaged) == 6
    assert not torch.equal(state["0.weight"], net.state_dict()["0.weight"])  # an average, not a copy


def test_the_state_saves_the_average_as_the_model_and_resumes_the_training_weights():
    net = _net()
    net(torch.randn(2, 2, 6, 6))
    state = TrainState(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    state.average = build_weight_average(net, decay=0.9)
    loop = LoopInfo(state=state, max_iter=3, start_iter=0)
    hook = AverageWeights()
    for applied in (True, False, True):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        loop.applied = applied
        hook.after_step(loop)  # a skipped (non-finite) step is not averaged
    assert int(state.average.n_averaged) == 2
    assert hook.on_stop(loop) is None and int(state.average.n_averaged) == 3  # the stopped step counts
    saved = state.state_dict()
    assert state.eval_model is state.average.module
    assert torch.equal(saved["model"]["0.weight"], state.average.module.state_dict()["0.weight"])
    assert torch.equal(saved["ema"]["training_model"]["0.weight"], net.state_dict()["0.weight"])
    assert saved["ema"]["updates"] == 3

    # Resumed with an average: both come back; without one: training continues from the training weights.
    again = _net()
    again(torch.randn(2, 2, 6, 6))
    resumed = TrainState(model=again, optimizer=torch.optim.SGD(again.parameters(), lr=0.1))
    resumed.average = build_weight_average(again, decay=0.9)
    resumed.load_state_dict(saved)
    assert torch.equal(again.state_dict()["0.weight"], net.state_dict()["0.weight"])
    assert torch.equal(resumed.average.module.state_dict()["0.weight"], saved["model"]["0.weight"])
    assert int(resumed.average.n_averaged) == 3
    plain = TrainState(model=_net())
    plain.model(torch.randn(2, 2, 6, 6))
    plain.load_state_dict(saved)
    assert torch.equal(plain.model.state_dict()["0.weight"], net.state_dict()["0.weight"])
    assert "ema" not in plain.state_dict()  # a run without an average writes the schema it always did


def test_a_run_with_an_average_resumes_bit_identical_and_saves_the_average(tmp_path):
    from test_exact_resume import _train, assert_same_state

    ema = ["solver.ema_decay=0.5", "solver.max_iter=6", "checkpoint_period=3"]
    full = _train(tmp_path, tmp_path / "full", ema)
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000003.pth", part / "model_0000003.pth")
    (part / "last_checkpoint").write_text("model_0000003.pth\n")
    resumed = _train(tmp_path, part, [*ema, "resume=true"])
    assert_same_state(full, resumed)
    assert full["ema"]["updates"] == resumed["ema"]["updates"] == 6
    for k, v in full["ema"]["training_model"].items():
        assert torch.equal(v, resumed["ema"]["training_model"][k]), k
    # The saved model is the average, not the weights SGD ended on.
    weights = full["ema"]["training_model"]
    assert any(not torch.equal(v, weights[k]) for k, v in full["model"].items() if v.is_floating_point())


def test_a_float16_step_the_grad_scaler_dropped_is_not_averaged():
    class Scaler:  # GradScaler's rule: an overflow lowers the scale and skips the update; growth raises it
        scale = 1024.0

        def get_scale(self):
            return self.scale

    net = nn.Linear(2, 2)
    state = TrainState(model=net)
    state.average = build_weight_average(net, decay=0.9)
    scaler = Scaler()
    hook, loop = AverageWeights(scaler=scaler), LoopInfo(state=state, max_iter=4, start_iter=0)
    for new_scale in (1024.0, 512.0, 1024.0, 1024.0):  # step 2 overflowed; step 3 grew the scale again
        scaler.scale = new_scale
        hook.after_step(loop)
    assert int(state.average.n_averaged) == 3


@pytest.mark.parametrize("value", ["1.0", "-0.5", "true"])
def test_a_decay_outside_0_to_1_stops_with_one_line(value):
    from conftest import compose_config
    from detector.cli.config import validate_train_config
    from detector.errors import ConfigError

    validate_train_config(compose_config("train", ["solver.ema_decay=0.99"]))
    with pytest.raises(ConfigError, match=r"^solver\.ema_decay must be"):
        validate_train_config(compose_config("train", [f"solver.ema_decay={value}"]))
