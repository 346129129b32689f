"""The training stream as a pure function of (seed, position): ranks, epochs, augmentation, sample seeds."""

from __future__ import annotations

import itertools

import pytest
import torch

from detector.data.sampler import PositionedDataset, TrainingSampler, _mix, orientation_groups


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


def test_a_run_starts_at_position_zero():
    assert list(itertools.islice(TrainingSampler(), 3)) == [0, 1, 2]


def test_transforms_without_a_seed_hook_are_left_alone():
    class PlainTransforms:  # e.g. a user's callable: it has no set_random_seed, and must not be asked for one
        def __call__(self, *args):
            return args

    data = Recorder(4)
    data.transforms = PlainTransforms()
    assert PositionedDataset(data, seed=0)[1][1]["image_id"] in range(4)


def test_the_wrapped_datasets_attributes_show_through_and_the_wrapper_pickles():
    import pickle

    data = Recorder(5)
    data.class_names = ["a", "b"]
    stream = PositionedDataset(data, seed=3)
    assert stream.class_names == ["a", "b"] and stream.n == 5
    # DataLoader workers unpickle it: before __dict__ is restored, a lookup must not recurse into itself.
    again = pickle.loads(pickle.dumps(stream))
    assert [again.index(p) for p in range(10)] == [stream.index(p) for p in range(10)]
    with pytest.raises(AttributeError, match="^dataset$"):
        PositionedDataset.__new__(PositionedDataset).dataset


class Shaped(Recorder):
    """Recorder with image sizes: ``aspect_ratios()`` as a detection dataset reports them."""

    def __init__(self, ratios):
        super().__init__(len(ratios))
        self.ratios = list(ratios)

    def aspect_ratios(self):
        return self.ratios


@pytest.mark.parametrize("n, batch", [(24, 4), (23, 4), (17, 3), (10, 8)])
def test_aspect_ratio_grouping_makes_batches_of_one_orientation(n, batch):
    generator = torch.Generator().manual_seed(n)
    ratios = (torch.rand(n, generator=generator) * 1.5 + 0.4).tolist()  # 0.4 .. 1.9, both orientations
    groups = orientation_groups(Shaped(ratios))
    assert groups == [0 if r >= 1 else 1 for r in ratios] and 0 < sum(groups) < n
    ds = PositionedDataset(Shaped(ratios), seed=5, groups=groups, group_size=batch)
    epochs = 6
    stream = [ds.index(p) for p in range(epochs * n)]
    for e in range(epochs):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))  # still each image once per epoch
    batches = [stream[i:i + batch] for i in range(0, len(stream) - batch + 1, batch)]
    mixed = sum(len({groups[i] for i in b}) > 1 for b in batches)
    assert mixed <= 2 * epochs  # the leftovers at each epoch's end, and nothing else
    # Without grouping the same stream mixes far more often (the test could tell the difference).
    plain = PositionedDataset(Shaped(ratios), seed=5)
    plain_batches = [[plain.index(p) for p in range(i, i + batch)] for i in range(0, len(stream) - batch + 1, batch)]
    if n >= 17:
        assert sum(len({groups[i] for i in b}) > 1 for b in plain_batches) > mixed
    # A function of (seed, position): another copy read backwards agrees; another seed does not.
    again = PositionedDataset(Shaped(ratios), seed=5, groups=groups, group_size=batch)
    assert [again.index(p) for p in reversed(range(len(stream)))] == stream[::-1]
    other = PositionedDataset(Shaped(ratios), seed=6, groups=groups, group_size=batch)
    assert [other.index(p) for p in range(len(stream))] != stream


def test_aspect_ratio_grouping_needs_the_sizes():
    assert orientation_groups(Recorder(4)) is None  # no aspect_ratios(): the loader does not group
    with pytest.raises(ValueError, match="3 group ids for 4 images"):
        PositionedDataset(Recorder(4), seed=0, groups=[0, 1, 0], group_size=2)


def test_the_training_loader_groups_per_rank_batches():
    from detector.data.collate import build_training_loader

    ratios = [1.5, 0.6] * 8 + [1.5] * 4  # 12 landscape, 8 portrait: 5 global batches of 4, no leftovers
    for rank in range(2):
        loader = build_training_loader(Shaped(ratios), batch_size=2, seed=1, rank=rank, world_size=2,
                                       aspect_ratio_grouping=True)
        batches = list(itertools.islice(iter(loader), 5))  # epoch 0, each rank's half of each batch
        for images, _ in batches:
            assert len({ratios[int(i)] for i in images}) == 1
