"""Dense CRF post-processing (Krähenbühl & Koltun 2011), with the settings published results use.

A fully connected CRF over the pixels of one image: the unary is -log of the method's per-pixel probabilities,
the pairwise terms are a Gaussian smoothness kernel and a bilateral (position + colour) appearance kernel, and
mean-field inference runs a fixed number of iterations. One image at a time: memory is bounded by one image's
[K, H, W]. The kernels depend on the image alone, so :class:`DenseCRF` builds them once and refines every
prediction of that image with them. Backed by ``pydensecrf2`` (a maintained build of pydensecrf that compiles on
current Python).
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


class DenseCRF:
    """The dense CRF of one image: its pairwise kernels (the costly permutohedral lattice) are built once per
    number of labels, then :meth:`refine` runs mean-field inference for any unary. Refining several predictions of
    the same image (other methods, other seeds) on one instance gives exactly the probabilities of a fresh CRF
    per prediction: inference starts from each unary anew."""

    def __init__(self, image: np.ndarray | torch.Tensor, params: CRFParams = CRFParams()):
        self.image = np.ascontiguousarray(image.cpu().numpy() if isinstance(image, torch.Tensor) else image,
                                          dtype=np.uint8)
        self.params = params
        self._by_labels: dict[int, object] = {}

    def _crf(self, k: int):
        import pydensecrf.densecrf as dcrf

        if k not in self._by_labels:
            h, w = self.image.shape[:2]
            crf = dcrf.DenseCRF2D(w, h, k)
            crf.addPairwiseGaussian(sxy=self.params.gaussian_sxy, compat=self.params.gaussian_compat)
            crf.addPairwiseBilateral(sxy=self.params.bilateral_sxy, srgb=self.params.bilateral_srgb,
                                     rgbim=self.image, compat=self.params.bilateral_compat)
            self._by_labels[k] = crf
        return self._by_labels[k]

    def refine(self, probs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Per-pixel probabilities [K, H, W] -> the CRF's refined probabilities [K, H, W] (unary = -log probs)."""
        from pydensecrf.utils import unary_from_softmax

        probs = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float32)
        k, h, w = probs.shape
        if self.image.shape != (h, w, 3):
            raise ValueError(f"dense CRF: image {self.image.shape} does not match the probabilities' size {(h, w)}")
        crf = self._crf(k)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
        return torch.from_numpy(np.array(crf.inference(self.params.iterations), dtype=np.float32).reshape(k, h, w))


def dense_crf(image: np.ndarray | torch.Tensor, probs: torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """Refine per-pixel probabilities [K, H, W] of one RGB uint8 image [H, W, 3]; returns probabilities [K, H, W]."""
    return DenseCRF(image, params).refine(probs)
