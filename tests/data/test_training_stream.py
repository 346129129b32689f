"""The training stream as a pure function of (seed, position): ranks, epochs, augmentation, sample seeds."""

from __future__ import annotations

import itertools

import pytest
import torch

from detector.data.sampler import PositionedDataset, TrainingSampler, _mix


class Recorder(torch.utils.data.Dataset):
    """Returns (index, target) and records the seed its transforms were given before each read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.transforms = self
        self.seeds: list[int] = []

    def set_random_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor(i), {"image_id": i}


def take(sampler, k):
    return list(itertools.islice(iter(sampler), k))


def test_ranks_interleave_into_the_one_process_stream():
    assert take(TrainingSampler(start=10), 4) == [10, 11, 12, 13]
    ranks = [take(TrainingSampler(start=10, rank=r, world_size=3), 4) for r in range(3)]
    assert ranks == [[10, 13, 16, 19], [11, 14, 17, 20], [12, 15, 18, 21]]
    assert sorted(p for r in ranks for p in r) == list(range(10, 22))  # every position once
    for rank, world in ((-1, 2), (2, 2)):
        with pytest.raises(ValueError, match="rank"):
            TrainingSampler(rank=rank, world_size=world)


def test_each_epoch_is_a_permutation_fixed_by_the_seed():
    ds = PositionedDataset(Recorder(5), seed=3)
    epochs = [[ds.index(e * 5 + i) for i in range(5)] for e in range(3)]
    assert all(sorted(e) == list(range(5)) for e in epochs)  # each image once per epoch
    assert len({tuple(e) for e in epochs}) == 3  # a new order each epoch
    again = PositionedDataset(Recorder(5), seed=3)
    assert [again.index(p) for p in range(15)] == [i for e in epochs for i in e]  # any order of reads
    assert [again.index(p) for p in reversed(range(15))] == [i for e in epochs for i in e][::-1]
    other = PositionedDataset(Recorder(5), seed=4)
    assert [other.index(p) for p in range(15)] != [i for e in epochs for i in e]
    assert [PositionedDataset(Recorder(5), seed=3, shuffle=False).index(p) for p in range(7)] == [0, 1, 2, 3, 4, 0, 1]


def test_augmentation_and_sample_seeds_are_functions_of_seed_and_position():
    rec = Recorder(4)
    ds = PositionedDataset(rec, seed=7)
    image, target = ds[6]
    assert int(image) == ds.index(6) and target["image_id"] == ds.index(6)
    assert rec.seeds == [_mix(7, 6) % 2**32]  # the transforms reseeded before the read
    assert target["sample_seed"] == _mix(_mix(7, 6), 1)
    # The same position gives the same seeds in another copy; neighbouring positions do not.
    assert PositionedDataset(Recorder(4), seed=7)[6][1]["sample_seed"] == target["sample_seed"]
    seeds = {ds[p][1]["sample_seed"] for p in range(8)}
    assert len(seeds) == 8
    assert "sample_seed" not in Recorder(4)[0][1]  # the wrapped dataset's own targets are untouched


def test_mix_spreads_neighbouring_values():
    values = [_mix(0, v) for v in range(1000)]
    assert len(set(values)) == 1000 and all(0 <= v < 2**63 for v in values)
    assert _mix(1, 0) != _mix(0, 1)
