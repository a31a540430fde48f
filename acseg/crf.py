"""Dense CRF post-processing (Krähenbühl & Koltun 2011), with the settings published results use.

A fully connected CRF over the pixels of one image: the unary is -log of the method's per-pixel probabilities,
the pairwise terms are a Gaussian smoothness kernel and a bilateral (position + colour) appearance kernel, and
mean-field inference runs a fixed number of iterations. One image at a time, in-process: memory is bounded by
one image's [K, H, W] and nothing can hang in a worker pool. Backed by ``pydensecrf2`` (a maintained build of
pydensecrf that compiles on current Python).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CRFParams:
    """STEGO's (and most published numbers') DenseCRF2D settings, docs/protocol.md."""

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


def dense_crf(image: np.ndarray | torch.Tensor, probs: torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """Refine per-pixel probabilities [K, H, W] of one RGB uint8 image [H, W, 3]; returns probabilities [K, H, W]."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    k, h, w = probs.shape
    image = np.ascontiguousarray(image.cpu().numpy() if isinstance(image, torch.Tensor) else image, dtype=np.uint8)
    if image.shape != (h, w, 3):
        raise ValueError(f"dense CRF: image {image.shape} does not match the probabilities' size {(h, w)}")
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.detach().float().cpu().numpy())))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image,
                             compat=params.bilateral_compat)
    q = np.array(crf.inference(params.iterations), dtype=np.float32).reshape(k, h, w)
    return torch.from_numpy(q)
