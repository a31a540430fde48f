"""STEGO on cached backbone features: the k-NN table (cached once), the training loop, and the segmenter.

Differences from STEGO's own code, all on purpose: training reads the feature cache (full images at the
benchmark's resolution, no five-crops), points are sampled at patch centres (the head is per point, so its
codes at a patch equal the head of that patch's feature), the feature correlation uses the features before
dropout, features may be centred (``stego.centre``: DINOv2 tokens share a large common component, so raw
correlations between random images average about 0.5 and the published shifts, set on DINO features, lose
their meaning), and the checkpoint is the last step (STEGO's keeps the best labelled-val mIoU: label leakage).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from acseg.stego import (ClusterProbe, CorrespondenceWeights, SegmentationHead, derangement, feature_correlation,
                         knn_table, stego_loss)
from bench import cache
from bench.config import Config
from bench.features import CachedFeatures, load_features
from bench.train import TrainingDiverged, feature_mean

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ k-NN table


def knn_path(cfg: Config, split: str) -> Path:
    """<stego.knn_dir>/<the feature cache key>/top<k>: one table per feature cache entry and k."""
    feature_entry = cache.cache_dir(cfg, split).relative_to(cfg.features.cache_dir)
    return Path(cfg.stego.knn_dir) / feature_entry / f"top{cfg.stego.knn}"


def pooled_features(features: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Global-average-pooled features [N, d] of cached maps [N, h, w, d], ``chunk`` images at a time."""
    return torch.cat([part.float().mean((1, 2)) for part in features.split(chunk)])


def _knn_meta(cfg: Config, split: str) -> dict:
    """What a valid k-NN entry must have been written for: its feature cache key and k."""
    return {**cache.expected_meta(cfg, split), "kind": "knn", "k": cfg.stego.knn}


def ensure_knn(cfg: Config, split: str, feats: CachedFeatures | None = None) -> Path:
    """The k-NN table of a split's images, computed once per feature cache entry and written atomically."""
    path = knn_path(cfg, split)
    meta = _knn_meta(cfg, split)
    if cache.is_valid(path, meta, filename="knn.safetensors"):
        return path
    feats = feats or load_features(cfg, split)
    table = knn_table(pooled_features(feats.features), cfg.stego.knn)
    cache.write_entry(path, {"knn": table}, {**meta, "names": feats.names}, filename="knn.safetensors")
    log.info("k-NN table (top %d) for %s: %s", cfg.stego.knn, split, path)
    return path


def load_knn(cfg: Config, split: str) -> torch.Tensor:
    path = knn_path(cfg, split)
    if not cache.is_valid(path, _knn_meta(cfg, split), filename="knn.safetensors"):
        raise FileNotFoundError(f"no k-NN table at {path}: run `acseg-bench baseline stego-knn` (or `dvc repro`)")
    tensors, _ = cache.read_entry(path, filename="knn.safetensors")
    return tensors["knn"]


# ------------------------------------------------------------------------------------------- the model


class StegoSegmenter(torch.nn.Module):
    """Segmentation head + cluster probe: cached features -> per-pixel cluster scores at the label resolution.

    Codes are upsampled bilinearly to the label size before the probe (as STEGO upsamples its codes).
    """

    def __init__(self, feature_dim: int, code_dim: int, n_clusters: int, dropout: float = 0.1,
                 feature_mean: torch.Tensor | None = None):
        super().__init__()
        self.head = SegmentationHead(feature_dim, code_dim, dropout)
        self.probe = ClusterProbe(code_dim, n_clusters)
        self.register_buffer("feature_mean", torch.zeros(feature_dim) if feature_mean is None else feature_mean.float())

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        b, h, w, d = features.shape
        codes = self.head(features.reshape(b, h * w, d).float() - self.feature_mean)  # [B, n, c]
        codes = codes.transpose(1, 2).reshape(b, -1, h, w)
        codes = F.interpolate(codes, size=out_size, mode="bilinear", align_corners=False)
        return self.probe(codes.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B, K, H, W]


@dataclass
class StegoHistory:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=lambda: {"self": [], "knn": [], "rand": [], "probe": []})
    # What the shifts are compared with: mean feature correlation F of each pair type, and the share of pairs
    # whose F exceeds the term's shift (pairs that attract), averaged over the logged steps.
    correlation: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def correlation_summary(self) -> dict[str, float]:
        return {k: round(sum(v) / len(v), 4) for k, v in self.correlation.items() if v}

    @property
    def steps_per_second(self) -> float:
        return self.steps[-1] / self.seconds if self.seconds and self.steps else float("nan")


def weights_of(cfg: Config) -> CorrespondenceWeights:
    s = cfg.stego
    return CorrespondenceWeights(s.w_self, s.w_knn, s.w_rand, s.shift_self, s.shift_knn, s.shift_rand)


def _points(flat: torch.Tensor, images: torch.Tensor, idx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Centred features [B, P, d] of ``images`` at patch indices ``idx`` [B, P] (flat: [N, h*w, d])."""
    return flat[images[:, None], idx].float() - mean


def train_stego(cfg: Config, seed: int, train: CachedFeatures, knn: torch.Tensor, n_clusters: int,
                device: torch.device, progress: bool = True) -> tuple[StegoSegmenter, StegoHistory]:
    """The whole loop: sample points, correspondence loss on the head, cluster loss on the detached codes."""
    s = cfg.stego
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    n_images, h, w, d = train.features.shape
    flat = train.features.reshape(n_images, h * w, d)  # float16, stays on the CPU
    mean = feature_mean(train.features, s.centre)
    model = StegoSegmenter(d, s.code_dim, n_clusters, s.dropout, mean).to(device)
    opt = torch.optim.Adam(model.head.parameters(), lr=s.lr)
    probe_opt = torch.optim.Adam(model.probe.parameters(), lr=s.probe_lr)
    weights, n_points = weights_of(cfg), s.feature_samples ** 2
    history, start = StegoHistory(), time.perf_counter()
    model.train()
    for step in tqdm(range(s.steps), desc="train stego", disable=not progress, unit="step"):
        batch = torch.randint(n_images, (s.batch_size,), generator=generator)
        neighbours = knn[batch, torch.randint(s.knn_draw, (s.batch_size,), generator=generator)]
        first, second = torch.randint(h * w, (2, s.batch_size, n_points), generator=generator)
        feats = _points(flat, batch, first, mean).to(device)
        feats_second = _points(flat, batch, second, mean).to(device)
        feats_knn = _points(flat, neighbours, second, mean).to(device)
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
            _log_correlations(history, cfg, feats, feats_knn, feats_second, generator)
            history.steps.append(step + 1)
            history.loss.append(terms["loss"].item())
            for name in ("self", "knn", "rand"):
                history.terms[name].append(terms[name].item())
            history.terms["probe"].append(probe_loss.item())
    history.seconds = time.perf_counter() - start
    return model.eval(), history


@torch.no_grad()
def _log_correlations(history: StegoHistory, cfg: Config, feats, feats_knn, feats_second, generator) -> None:
    s = cfg.stego
    perm = derangement(feats.shape[0], generator).to(feats.device)
    pairs = {"self": (feats, s.shift_self), "knn": (feats_knn, s.shift_knn), "rand": (feats_second[perm], s.shift_rand)}
    for name, (other, shift) in pairs.items():
        fd = feature_correlation(feats, other, s.pointwise)
        history.correlation.setdefault(f"feature_correlation_{name}", []).append(fd.mean().item())
        history.correlation.setdefault(f"attract_fraction_{name}", []).append((fd > shift).float().mean().item())
