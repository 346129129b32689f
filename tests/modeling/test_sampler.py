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
