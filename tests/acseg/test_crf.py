"""The dense CRF keeps what the colours confirm and removes what they contradict."""

import numpy as np
import torch

from acseg.crf import CRFParams, dense_crf


def _two_halves(h=40, w=60):
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 30, 30)
    image[:, w // 2 :] = (30, 30, 200)
    probs = torch.full((3, h, w), 0.05)
    probs[0, :, : w // 2] = 0.9
    probs[1, :, w // 2 :] = 0.9
    return image, probs / probs.sum(0)


def test_clean_segmentation_that_agrees_with_the_colours_is_unchanged():
    image, probs = _two_halves()
    refined = dense_crf(image, probs, CRFParams())
    assert refined.shape == probs.shape
    assert torch.allclose(refined.sum(0), torch.ones(probs.shape[1:]), atol=1e-4)
    assert torch.equal(refined.argmax(0), probs.argmax(0))


def test_one_pixel_speckle_is_fixed():
    image, probs = _two_halves()
    probs[:, 20, 10] = torch.tensor([0.3, 0.6, 0.1])  # a lone "right" pixel inside the red left half
    assert probs.argmax(0)[20, 10] == 1
    refined = dense_crf(image, probs).argmax(0)
    assert refined[20, 10] == 0
    clean = probs.argmax(0).clone()
    clean[20, 10] = 0
    assert torch.equal(refined, clean)


def test_size_mismatch_is_a_clear_error():
    import pytest

    image, probs = _two_halves()
    with pytest.raises(ValueError, match="does not match"):
        dense_crf(image[:-1], probs)
