"""The collective helpers in one process: without a process group they are the identity; inside a
one-rank gloo group they take the collective path and must still give the one-process answer.
(Two ranks: tests/engine/test_distributed.py, through torchrun.)"""

import pytest
import torch
import torch.distributed as dist

from detector.engine.distributed import all_gather_objects, broadcast_buffers, mean_over_ranks, replicas_agree


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _check(model):
    assert mean_over_ranks({"b": 2.0, "a": 0.5}, torch.device("cpu")) == {"a": 0.5, "b": 2.0}
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
