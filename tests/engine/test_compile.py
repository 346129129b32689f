"""torch.compile of the backbone and box head (detector.engine.compile): the same losses and
gradients as the eager model, the same checkpoint keys, and the train config's switch.

The backend here is ``eager`` (Dynamo traces the parts, no code is generated), so the test checks the
wiring in seconds; what TorchInductor's generated code costs and gains is a benchmark
(docs/speed.md), not a test."""

import copy

import pytest
import torch

from detector.engine.compile import COMPILED_PARTS, compile_parts
from tests.conftest import compose_config, tiny_model


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 160, generator=g), torch.rand(3, 160, 128, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 100.0, 60.0], [5.0, 5.0, 40.0, 40.0]]),
                "labels": torch.tensor([2, 3])}]
    return images, targets


def _losses_and_grads(model):
    images, targets = _batch()
    torch.manual_seed(1)  # the RPN's and sampler's draws
    losses = model(images, targets)
    sum(losses.values()).backward()
    return ({k: v.detach() for k, v in losses.items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


def test_compiled_parts_train_as_the_eager_model_and_keep_the_checkpoint_keys():
    torch._dynamo.reset()
    eager = tiny_model().train()
    compiled = copy.deepcopy(eager)
    assert compile_parts(compiled, backend="eager") == list(COMPILED_PARTS)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # no `_orig_mod.` prefix
    want, want_grads = _losses_and_grads(eager)
    got, got_grads = _losses_and_grads(compiled)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    # Dynamo really ran the parts: each holds a compiled call.
    for path in COMPILED_PARTS:
        assert compiled.get_submodule(path)._compiled_call_impl is not None
        assert eager.get_submodule(path)._compiled_call_impl is None


def test_a_model_without_the_parts_is_named():
    with pytest.raises(ValueError, match=r"^compile: the model has no backbone to compile \(Linear\)$"):
        compile_parts(torch.nn.Linear(2, 2), backend="eager")


def test_the_train_switch_is_off_by_default_and_a_boolean():
    from detector.cli.config import validate_train_config
    from detector.errors import ConfigError

    assert compose_config("train").compile is False
    validate_train_config(compose_config("train", ["compile=true"]))
    with pytest.raises(ConfigError, match=r"^compile must be true or false, got 'inductor'$"):
        validate_train_config(compose_config("train", ["compile=inductor"]))


@pytest.mark.parametrize("switch", [True, False])
def test_train_compiles_the_parts_when_asked(monkeypatch, switch):
    from types import SimpleNamespace

    import detector.cli.train as train
    from detector.engine.distributed import init_distributed
    from tests.conftest import TINY_MODEL

    calls = []
    monkeypatch.setattr(train, "compile_parts", lambda model: calls.append(model) or list(COMPILED_PARTS))
    cfg = compose_config("train", [*TINY_MODEL, f"compile={str(switch).lower()}"])
    ddp, device = init_distributed(torch.device("cpu"))
    state, _ = train.build_state(cfg, ddp, device, SimpleNamespace(class_names=["a", "b"]), None)
    assert calls == ([state.model] if switch else [])
    # With a moving average the evaluated model (a deep copy, which runs eagerly) is compiled too.
    calls.clear()
    cfg = compose_config("train", [*TINY_MODEL, f"compile={str(switch).lower()}", "solver.ema_decay=0.9"])
    state, _ = train.build_state(cfg, ddp, device, SimpleNamespace(class_names=["a", "b"]), None)
    assert calls == ([state.model, state.average.module] if switch else [])
