"""The collective helpers in one process: without a process group they are the identity; inside a
one-rank gloo group they take the collective path and must still give the one-process answer.
(Two ranks: tests/engine/test_distributed.py, through torchrun.)"""

import pytest
import torch
import torch.distributed as dist

from detector.engine.distributed import (all_gather_objects, barrier, broadcast_buffers, mean_over_ranks, replicas_agree,
                                         shutdown_distributed)


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _check(model):
    # float64 on the way: 0.1 comes back as 0.1, not float32's 0.10000000149
    assert mean_over_ranks({"b": 2.0, "a": 0.1}, torch.device("cpu")) == {"a": 0.1, "b": 2.0}
    assert mean_over_ranks({}, torch.device("cpu")) == {}
    assert all_gather_objects({"rank": 0, "rows": [1, 2]}) == [{"rank": 0, "rows": [1, 2]}]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    broadcast_buffers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert replicas_agree(model)


def test_helpers_without_a_process_group():
    assert not dist.is_initialized()
    _check(torch.nn.BatchNorm1d(3))


def test_helpers_in_a_one_rank_group(one_rank_group):
    assert dist.get_world_size() == 1
    _check(torch.nn.BatchNorm1d(3))


def test_barrier_waits_only_inside_a_process_group(monkeypatch):
    calls = []
    real = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append(1) or real(*a, **k))
    barrier()  # one process: nothing to wait for, and no group to ask
    assert calls == []
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        barrier()
    finally:
        dist.destroy_process_group()
    assert calls == [1]


def test_replicas_agree_tells_swapped_and_nudged_weights_apart(monkeypatch):
    # Another rank's fingerprint is faked by gathering this process's fingerprint of another model.
    import copy

    import detector.engine.distributed as d

    def fingerprint(model):
        seen = []
        monkeypatch.setattr(d, "all_gather_objects", lambda obj: seen.append(obj) or [obj])
        d.replicas_agree(model)
        return seen[0]

    def agree(model, other):
        theirs = fingerprint(other)
        monkeypatch.setattr(d, "all_gather_objects", lambda obj: [obj, theirs])
        return d.replicas_agree(model)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    assert agree(model, copy.deepcopy(model))
    swapped = copy.deepcopy(model)  # the same sum, another order: the weighted sum sees it
    with torch.no_grad():
        swapped[0].weight[0, 0], swapped[0].weight[0, 1] = model[0].weight[0, 1].item(), model[0].weight[0, 0].item()
    assert not agree(model, swapped)
    nudged = copy.deepcopy(model)  # a buffer (BatchNorm statistics) differs by a little
    nudged[1].running_mean[1] += 1e-6
    assert not agree(model, nudged)
    bigger = copy.deepcopy(model)
    bigger[0].bias.data[0] += 1.0
    assert not agree(model, bigger)


def test_shutdown_destroys_the_group_once_and_is_a_no_op_without_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    shutdown_distributed()
    assert not dist.is_initialized()
    shutdown_distributed()  # nothing left to destroy: no error


def test_the_train_command_shuts_the_group_down_after_the_run_and_after_a_failure(monkeypatch):
    from omegaconf import OmegaConf

    from detector.cli import train as train_cli

    calls = []
    monkeypatch.setattr(train_cli, "shutdown_distributed", lambda: calls.append("shutdown"))
    monkeypatch.setattr(train_cli, "train", lambda cfg: {"AP50": 0.5})
    assert train_cli.main(OmegaConf.create({"training": "joint"})) == 0.5 and calls == ["shutdown"]

    def fails(cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(train_cli, "train", fails)
    with pytest.raises(RuntimeError, match="boom"):
        train_cli.main(OmegaConf.create({"training": "joint"}))
    assert calls == ["shutdown", "shutdown"]


def _torchrun_env(monkeypatch, **env):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT",
                "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def recorded_init(monkeypatch):
    """init_process_group and the stores recorded instead of joined (two ranks cannot live in one
    process; the real two-rank joins run under torchrun in tests/engine/test_distributed.py)."""
    import detector.engine.distributed as d

    calls = []
    monkeypatch.setattr(d.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(d.dist, "TCPStore", lambda *a, **kw: calls.append(("tcp", a, kw)) or "agent-store")
    monkeypatch.setattr(d.dist, "PrefixStore", lambda prefix, store: ("prefix", prefix, store))
    return calls


def test_init_distributed_in_one_process_joins_nothing(monkeypatch, recorded_init):
    from detector.engine.distributed import Distributed, init_distributed

    cpu = torch.device("cpu")
    for env in ({}, {"WORLD_SIZE": "1", "RANK": "0"}):
        _torchrun_env(monkeypatch, **env)
        ranks, device = init_distributed(cpu)
        assert ranks == Distributed() and not ranks.enabled and ranks.is_main and device is cpu
    assert recorded_init == []


def test_init_distributed_under_torchrun_on_the_cpu(monkeypatch, recorded_init):
    from datetime import timedelta

    from detector.engine.distributed import Distributed, init_distributed

    _torchrun_env(monkeypatch, WORLD_SIZE="2", RANK="1")
    ranks, device = init_distributed(torch.device("cpu"))
    assert ranks == Distributed(rank=1, world_size=2, local_rank=0) and ranks.enabled and not ranks.is_main
    assert device == torch.device("cpu")
    assert recorded_init == [("init", {"backend": "gloo", "timeout": timedelta(minutes=30)})]
    # torchrun's agent store: the process group's keys live under this attempt's number
    recorded_init.clear()
    _torchrun_env(monkeypatch, WORLD_SIZE="4", RANK="2", LOCAL_RANK="0", TORCHELASTIC_USE_AGENT_STORE="True",
                  TORCHELASTIC_RESTART_COUNT="3", MASTER_ADDR="10.0.0.7", MASTER_PORT="29511")
    ranks, _ = init_distributed(torch.device("cpu"))
    assert ranks == Distributed(rank=2, world_size=4, local_rank=0)
    assert recorded_init == [
        ("tcp", ("10.0.0.7", 29511), {"is_master": False, "timeout": timedelta(minutes=30)}),
        ("init", {"backend": "gloo", "timeout": timedelta(minutes=30), "store": ("prefix", "detector/attempt_3", "agent-store"),
                  "rank": 2, "world_size": 4}),
    ]
    recorded_init.clear()
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    init_distributed(torch.device("cpu"))
    assert recorded_init[1][1]["store"][1] == "detector/attempt_0"  # the first attempt
    # a process group already joined (a caller's own) is kept
    recorded_init.clear()
    import detector.engine.distributed as d

    monkeypatch.setattr(d.dist, "is_initialized", lambda: True)
    assert init_distributed(torch.device("cpu"))[0] == Distributed(rank=2, world_size=4, local_rank=0)
    assert recorded_init == []


def test_init_distributed_under_torchrun_on_cuda_takes_the_local_gpu(monkeypatch, recorded_init):
    from datetime import timedelta

    from detector.engine.distributed import Distributed, init_distributed
    from detector.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    _torchrun_env(monkeypatch, WORLD_SIZE="2", RANK="1", LOCAL_RANK="2")
    with pytest.raises(ConfigError, match=r"^LOCAL_RANK=2 but this machine has 2 GPUs$"):
        init_distributed(torch.device("cuda"))
    _torchrun_env(monkeypatch, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    ranks, device = init_distributed(torch.device("cuda"))
    assert ranks == Distributed(rank=1, world_size=2, local_rank=1)
    assert device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert recorded_init == [("init", {"backend": "nccl", "timeout": timedelta(minutes=30), "device_id": torch.device("cuda", 1)})]
