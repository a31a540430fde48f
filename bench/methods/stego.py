"""STEGO on cached backbone features: the k-NN positives, the training loop, and the segmenter.

Differences from STEGO's own code, all on purpose: training reads the feature cache (full images at the
benchmark's resolution, no five-crops), points are sampled at patch centres (the head is per point, so its codes at
a patch equal the head of that patch's feature), the feature correlation uses the features before dropout,
features may be centred (``stego.centre``), and the checkpoint is the last step (STEGO's keeps the best
labelled-val mIoU: label leakage).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from acseg.features import centred_pixels
from acseg.stego import (ClusterProbe, CorrespondenceWeights, SegmentationHead, derangement, feature_correlation,
                         knn_table, stego_loss)
from bench.config import Config
from bench.features import CachedFeatures, load_features
from bench.methods import register_method
from bench.methods.base import Fitted, History, Method, TrainingDiverged, feature_mean
from bench.methods.kmeans import SegmenterPredictor

log = logging.getLogger(__name__)


def pooled_features(feats: CachedFeatures, chunk: int = 64) -> torch.Tensor:
    """Global-average-pooled features [N, d], one row per image."""
    grid = feats.uniform_grid
    if grid is not None:
        maps = feats.all_rows().view(len(feats), *grid, feats.dim)
        return torch.cat([part.float().mean((1, 2)) for part in maps.split(chunk)])
    rows = feats.all_rows()
    return torch.stack([rows[feats.offsets[i]:feats.offsets[i + 1]].float().mean(0) for i in range(len(feats))])


class StegoSegmenter(torch.nn.Module):
    """Segmentation head + cluster probe: cached features -> per-pixel cluster scores at the label resolution.

    Codes are upsampled bilinearly to the label size before the probe (as STEGO upsamples its codes)."""

    def __init__(self, feature_dim: int, code_dim: int, n_clusters: int, dropout: float = 0.1,
                 feature_mean: torch.Tensor | None = None):
        super().__init__()
        self.head = SegmentationHead(feature_dim, code_dim, dropout)
        self.probe = ClusterProbe(code_dim, n_clusters)
        self.register_buffer("feature_mean", torch.zeros(feature_dim) if feature_mean is None else feature_mean.float())

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        b, h, w, _ = features.shape
        codes = self.head(centred_pixels(features, self.feature_mean))  # [B, n, c]
        codes = codes.transpose(1, 2).reshape(b, -1, h, w)
        codes = F.interpolate(codes, size=out_size, mode="bilinear", align_corners=False)
        return self.probe(codes.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B, K, H, W]


def weights_of(cfg: Config) -> CorrespondenceWeights:
    s = cfg.stego
    return CorrespondenceWeights(s.w_self, s.w_knn, s.w_rand, s.shift_self, s.shift_knn, s.shift_rand)


class PointSampler:
    """Centred features [B, P, d] of images at patch indices; indices drawn uniformly over each image's patches."""

    def __init__(self, feats: CachedFeatures, mean: torch.Tensor):
        self.feats, self.mean = feats, mean
        self.grid = feats.uniform_grid
        self.rows = feats.all_rows()
        self.counts = feats.grids[:, 0] * feats.grids[:, 1]

    def draw(self, images: torch.Tensor, points: int, generator: torch.Generator) -> torch.Tensor:
        """Patch indices [2, B, points] (two independent sets) for each of ``images``."""
        if self.grid is not None:
            return torch.randint(self.grid[0] * self.grid[1], (2, len(images), points), generator=generator)
        n = self.counts[images]
        return (torch.rand(2, len(images), points, generator=generator) * n[None, :, None]).long()

    def __call__(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.grid is not None:
            flat = self.rows.view(len(self.feats), self.grid[0] * self.grid[1], -1)
            return flat[images[:, None], idx].float() - self.mean
        return self.rows[self.feats.offsets[images][:, None] + idx].float() - self.mean


def train_stego(cfg: Config, seed: int, train: CachedFeatures, knn: torch.Tensor, n_clusters: int,
                device: torch.device, progress: bool = True) -> tuple[StegoSegmenter, History]:
    """The whole loop: sample points, correspondence loss on the head, cluster loss on the detached codes."""
    s = cfg.stego
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mean = feature_mean(train, s.centre)
    points = PointSampler(train, mean)
    model = StegoSegmenter(train.dim, s.code_dim, n_clusters, s.dropout, mean).to(device)
    opt = torch.optim.Adam(model.head.parameters(), lr=s.lr)
    probe_opt = torch.optim.Adam(model.probe.parameters(), lr=s.probe_lr)
    weights, n_points = weights_of(cfg), s.feature_samples ** 2
    history = History()
    correlations: dict[str, list[float]] = {}
    model.train()
    for step in tqdm(range(s.steps), desc="train stego", disable=not progress, unit="step"):
        batch = torch.randint(len(train), (s.batch_size,), generator=generator)
        neighbours = knn[batch, torch.randint(s.knn_draw, (s.batch_size,), generator=generator)]
        first, second = points.draw(batch, n_points, generator)
        feats = points(batch, first).to(device)
        feats_second = points(batch, second).to(device)
        feats_knn = points(neighbours, second.clamp_max(points.counts[neighbours][:, None] - 1)).to(device)
        # One head pass per image (one dropout mask per image, as on a whole feature map).
        codes, codes_second = model.head(torch.cat([feats, feats_second], 1)).split(n_points, 1)
        codes_knn = model.head(feats_knn)
        terms = stego_loss(feats, codes, feats_knn, codes_knn, feats_second, codes_second, weights,
                           s.neg_samples, s.pointwise, s.zero_clamp, generator)
        probe_loss = model.probe.loss(torch.cat([codes, codes_second], 1).detach())
        loss = terms["loss"] + probe_loss
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"STEGO loss became {loss.item()} at step {step}; lower stego.lr")
        opt.zero_grad(set_to_none=True)
        probe_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        probe_opt.step()
        if step % s.log_every == 0 or step == s.steps - 1:
            _log_correlations(correlations, cfg, feats, feats_knn, feats_second, generator)
            history.log({"step": step + 1, "loss": terms["loss"].item(),
                         **{n: terms[n].item() for n in ("self", "knn", "rand")}, "probe": probe_loss.item()})
    summary = {k: round(sum(v) / len(v), 4) for k, v in correlations.items() if v}
    return model.eval(), history.stop(), summary


@torch.no_grad()
def _log_correlations(out: dict[str, list[float]], cfg: Config, feats, feats_knn, feats_second, generator) -> None:
    """What the shifts are compared with: the mean feature correlation F of each pair type, and the share of pairs
    whose F exceeds the term's shift (pairs that attract)."""
    s = cfg.stego
    perm = derangement(feats.shape[0], generator).to(feats.device)
    pairs = {"self": (feats, s.shift_self), "knn": (feats_knn, s.shift_knn), "rand": (feats_second[perm], s.shift_rand)}
    for name, (other, shift) in pairs.items():
        fd = feature_correlation(feats, other, s.pointwise)
        out.setdefault(f"feature_correlation_{name}", []).append(fd.mean().item())
        out.setdefault(f"attract_fraction_{name}", []).append((fd > shift).float().mean().item())


class StegoMethod(Method):
    name = "stego"
    title = "STEGO"

    def fit(self, cfg: Config, seed: int, device: torch.device, progress: bool = True) -> Fitted:
        train = load_features(cfg, cfg.data.train_split)
        knn = knn_table(pooled_features(train), cfg.stego.knn)  # each image's nearest images: STEGO's positives
        model, history, summary = train_stego(cfg, seed, train, knn, self.n_clusters(cfg), device, progress)
        facts = {"feature_dim": train.dim, "n_clusters": self.n_clusters(cfg),
                 "weights_sha256": train.meta["weights_sha256"]}
        return Fitted(model, facts, history, summary, f"STEGO correspondence loss, seed {seed}")

    def build(self, cfg: Config, facts: dict[str, Any]) -> StegoSegmenter:
        return StegoSegmenter(facts["feature_dim"], cfg.stego.code_dim, facts["n_clusters"], cfg.stego.dropout)

    def predictor(self, cfg, model, facts, device, split):
        return SegmenterPredictor(model)


register_method(StegoMethod())
