import torch

from bench.diagnose import hard_modularity, majority_relabel


def test_majority_relabel_is_the_oracle():
    segments = torch.tensor([[0, 0, 1], [1, 1, 2]])
    labels = torch.tensor([[3, 3, 5], [4, 4, 11]])
    assert majority_relabel(segments, labels, 11, 11).tolist() == [[3, 3, 4], [4, 4, 0]]


def test_true_partition_has_higher_modularity():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(10)
    x = torch.eye(8)[labels] + 0.05 * torch.randn(30, 8, generator=g)
    assert hard_modularity(x, labels) > hard_modularity(x, torch.randint(0, 3, (30,), generator=g)) + 0.3
