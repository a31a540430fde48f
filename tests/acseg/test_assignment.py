import torch

from acseg.assignment import channel_argmax


def test_channel_argmax_is_argmax_over_channels():
    torch.manual_seed(0)
    scores = torch.randn(2, 7, 9, 11)
    assert torch.equal(channel_argmax(scores), scores.argmax(1))


def test_channel_argmax_takes_the_first_of_tied_channels():
    scores = torch.full((1, 4, 2, 3), -2.0)  # e.g. concepts that win no patch, all masked to -2
    scores[:, 1:3] = 5.0
    assert torch.equal(channel_argmax(scores), torch.ones(1, 2, 3, dtype=torch.long))
