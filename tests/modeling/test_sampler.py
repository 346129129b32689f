import pytest
import torch

from detector.modeling import BalancedPositiveNegativeSampler


def test_counts_cap_positives_and_fill_with_negatives():
    torch.manual_seed(0)
    s = BalancedPositiveNegativeSampler(batch_size_per_image=256, positive_fraction=0.5)
    labels = torch.cat([torch.ones(300), torch.zeros(1000), -torch.ones(50)]).long()
    pos, neg = s(labels)
    assert pos.sum() == 128 and neg.sum() == 128
    assert not (pos & neg).any()
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()


def test_few_positives_filled_with_negatives():
    s = BalancedPositiveNegativeSampler(batch_size_per_image=512, positive_fraction=0.25)
    labels = torch.cat([torch.full((10,), 3), torch.zeros(1000)]).long()
    pos, neg = s(labels)
    assert pos.sum() == 10 and neg.sum() == 502


def test_too_few_candidates():
    s = BalancedPositiveNegativeSampler(batch_size_per_image=512, positive_fraction=0.25)
    labels = torch.tensor([1, 0, 0, -1])
    pos, neg = s(labels)
    assert pos.tolist() == [True, False, False, False]
    assert neg.tolist() == [False, True, True, False]


def test_seeded():
    s = BalancedPositiveNegativeSampler(batch_size_per_image=16, positive_fraction=0.5)
    labels = torch.cat([torch.ones(100), torch.zeros(100)]).long()
    torch.manual_seed(1)
    a = s(labels)
    torch.manual_seed(1)
    b = s(labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_arguments():
    with pytest.raises(ValueError):
        BalancedPositiveNegativeSampler(batch_size_per_image=0, positive_fraction=0.5)
    with pytest.raises(ValueError):
        BalancedPositiveNegativeSampler(batch_size_per_image=8, positive_fraction=1.5)


def test_a_sample_seed_makes_the_draw_a_function_of_the_sample_alone():
    from detector.modeling.sampler import STREAM_ROI, STREAM_RPN, sample_generator

    s = BalancedPositiveNegativeSampler(batch_size_per_image=16, positive_fraction=0.5)
    labels = torch.cat([torch.ones(100), torch.zeros(100)]).long()
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        draws.append(s(labels, generator=sample_generator({"sample_seed": 7}, STREAM_RPN)))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    other = s(labels, generator=sample_generator({"sample_seed": 7}, STREAM_ROI))
    assert not torch.equal(other[0], draws[0][0])  # another stream of the same sample: another draw
    assert sample_generator({"boxes": torch.zeros(0, 4)}, STREAM_RPN) is None  # a user's target: the global RNG
