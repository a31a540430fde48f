"""STEGO on cached backbone features: the k-NN positives, the shift calibration, the training loop, the two
readouts (cluster probe, k-means on the codes), and the segmenter.

Three registered methods read this module, each with its own params section (a copy of ``stego``'s):

| method | shifts | readout |
| --- | --- | --- |
| ``stego`` | ``stego.shifts`` (calibrated by default) | the cluster probe, as published |
| ``stego_kmeans`` | the same training (the trained head is cached, so it is trained once) | k-means on the trained codes of the cluster split, restarts chosen by inertia |
| ``stego_published`` | the published shifts (``shift_self/knn/rand``, conf/stego) on raw features: STEGO's recipe | the cluster probe |

Differences from STEGO's own code, all on purpose: training reads the feature cache (whole images at the
benchmark's resolution) unless ``five_crop_ratio`` > 0 (then five crops of each training image, encoded once into
an entry of their own, as STEGO trains; the k-NN positives and the calibration are then among the crops), points
are sampled at patch centres unless ``sampling: continuous`` (then bilinearly, as STEGO does), the feature correlation uses the features before dropout unless ``correlation_dropout``, features
may be centred (``centre``), the probe's dead centroids are re-seeded (``probe_reseed_every``), and the checkpoint is
the last step (STEGO's keeps the best labelled-val mIoU: label leakage).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from tqdm import tqdm

from acseg.features import centred_pixels
from acseg.kmeans import centroid_scores, kmeans
from acseg.stego import (ClusterProbe, CorrespondenceWeights, SegmentationHead, bilinear_points, calibrated_shifts,
                         derangement, feature_correlation, knn_table, stego_loss)
from bench.config import Config, Section, added_option, identity
from bench.data import atomic_path
from bench.features import CachedFeatures, five_crop_features, five_crop_view, load_features
from bench.methods.base import Fitted, History, Method, Predictor, TrainingDiverged, feature_mean, register_method
from bench.methods.kmeans import SegmenterPredictor

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- settings


class StegoConfig(Section):
    """STEGO trained on cached features (docs/protocol.md). The methods ``stego`` (cluster probe),
    ``stego_kmeans`` (k-means on the trained codes) and ``stego_published`` (the published shifts) each read their
    own section of this type (conf/config.yaml makes the two variants copies of ``stego``)."""

    code_dim: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1, description="whole feature channels, per image")
    knn: int = Field(ge=1, description="neighbours kept per image in the k-NN table")
    knn_draw: int = Field(ge=1, description="a positive is drawn uniformly from the nearest knn_draw")
    feature_samples: int = Field(ge=1, description="an S x S set of points per image in the loss")
    neg_samples: int = Field(ge=0, description="random-image pairings per step")
    pointwise: bool = Field(description="centre each point's feature correlations")
    zero_clamp: bool
    w_self: float
    w_knn: float
    w_rand: float
    shift_self: float = Field(description="used when shifts is published or manual")
    shift_knn: float
    shift_rand: float
    shifts: Literal["calibrated", "published", "manual"] = Field(
        description="calibrated: each term's shift is the quantile of the training split's feature correlations "
                    "that makes repel_<term> of its sampled pairs repel (the default wherever no recipe for the "
                    "backbone and dataset was published); published/manual: shift_self/knn/rand as given")
    repel_self: float = Field(gt=0, lt=1, description="calibrated: the fraction of self pairs that repel")
    repel_knn: float = Field(gt=0, lt=1, description="calibrated: the fraction of k-NN pairs that repel")
    repel_rand: float = Field(gt=0, lt=1, description="calibrated: the fraction of random-image pairs that repel")
    calibration_batches: int = Field(ge=1, description="calibrated: sampled batches the correlations are drawn from")
    sampling: Literal["patches", "continuous"] = Field(
        description="points at patch centres, or at continuous coordinates read bilinearly (STEGO's own)")
    correlation_dropout: bool = Field(description="F from the features after the head's dropout (STEGO's own code)")
    five_crop_ratio: float = added_option(
        0.0, "0: train on the training split's whole images (the feature cache's); 0 < r < 1: on five crops of each "
             "(its four corners and centre, each r of its height and width, re-encoded at the features' input size: "
             "STEGO's own training views, r = 0.5 there)", ge=0, lt=1)
    five_crop_zoom: bool = added_option(
        True, "five crops: true: each crop resized to the features' input size (the scene seen 1/r times larger than "
              "in the whole images it is evaluated on, as STEGO trains); false: each crop keeps the whole image's "
              "scale (r of its input size)")
    probe_reseed_every: int = Field(ge=0, description="steps between re-seeding probe centroids that won no point "
                                                       "(0: never)")
    kmeans_n_init: int = Field(ge=1, description="the k-means readout of the codes: restarts, lowest inertia wins")
    kmeans_iters: int = Field(ge=1)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=2, description="the random-image term needs at least 2 images a batch")
    lr: float = Field(gt=0, description="head")
    probe_lr: float = Field(gt=0, description="cluster probe")
    log_every: int = Field(ge=1)
    centre: bool = Field(description="subtract the training split's mean feature (STEGO: raw features)")

    @model_validator(mode="after")
    def _draw(self) -> StegoConfig:
        if self.knn_draw > self.knn:
            raise ValueError(f"stego.knn_draw={self.knn_draw} must be between 1 and stego.knn={self.knn}")
        return self
TERMS = ("self", "knn", "rand")


def pooled_features(feats: CachedFeatures, chunk: int = 64) -> torch.Tensor:
    """Global-average-pooled features [N, d], one row per image."""
    grid = feats.uniform_grid
    if grid is not None:
        maps = feats.all_rows().view(len(feats), *grid, feats.dim)
        return torch.cat([part.float().mean((1, 2)) for part in maps.split(chunk)])
    rows = feats.all_rows()
    return torch.stack([rows[feats.offsets[i]:feats.offsets[i + 1]].float().mean(0) for i in range(len(feats))])


class StegoSegmenter(torch.nn.Module):
    """Segmentation head + cluster probe (+ the k-means readout's centroids): cached features -> per-pixel cluster
    scores at the label resolution. Codes are upsampled bilinearly to the label size before the readout (as STEGO
    upsamples its codes)."""

    def __init__(self, feature_dim: int, code_dim: int, n_clusters: int, dropout: float = 0.1,
                 feature_mean: torch.Tensor | None = None, readout: str = "probe"):
        super().__init__()
        self.head = SegmentationHead(feature_dim, code_dim, dropout)
        self.probe = ClusterProbe(code_dim, n_clusters)
        self.register_buffer("feature_mean", torch.zeros(feature_dim) if feature_mean is None else feature_mean.float())
        self.register_buffer("code_centroids", torch.zeros(n_clusters, code_dim))  # the k-means readout
        self.readout = readout

    def codes(self, features: torch.Tensor) -> torch.Tensor:
        """[B, h, w, d] cached features -> codes [B, n, c]."""
        return self.head(centred_pixels(features, self.feature_mean))

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        b, h, w, _ = features.shape
        codes = self.codes(features).transpose(1, 2).reshape(b, -1, h, w)
        codes = F.interpolate(codes, size=out_size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        if self.readout == "kmeans":
            return centroid_scores(codes, self.code_centroids, cosine=True).permute(0, 3, 1, 2)
        return self.probe(codes).permute(0, 3, 1, 2)  # [B, K, H, W]


def weights_of(s: StegoConfig, shifts: dict[str, float]) -> CorrespondenceWeights:
    return CorrespondenceWeights(s.w_self, s.w_knn, s.w_rand, shifts["self"], shifts["knn"], shifts["rand"])


class PointSampler:
    """Centred features [B, P, d] of images at sampled points: patch centres drawn uniformly over each image's
    patches, or continuous coordinates read bilinearly."""

    def __init__(self, feats: CachedFeatures, mean: torch.Tensor, continuous: bool):
        self.feats, self.mean, self.continuous = feats, mean, continuous
        self.grid = feats.uniform_grid
        self.rows = feats.all_rows()
        self.counts = feats.grids[:, 0] * feats.grids[:, 1]

    def draw(self, images: torch.Tensor, points: int, generator: torch.Generator) -> torch.Tensor:
        """Two independent point sets for each of ``images``: patch indices [2, B, P], or coordinates
        [2, B, P, 2] in [-1, 1]."""
        if self.continuous:
            return torch.rand(2, len(images), points, 2, generator=generator) * 2 - 1
        if self.grid is not None:
            return torch.randint(self.grid[0] * self.grid[1], (2, len(images), points), generator=generator)
        n = self.counts[images]
        return (torch.rand(2, len(images), points, generator=generator) * n[None, :, None]).long()

    def __call__(self, images: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The images' centred features at ``where`` (one draw: [B, P] or [B, P, 2]); a patch index beyond a
        smaller image's patches is clamped to its last patch."""
        if self.continuous:
            out = torch.empty(len(images), where.shape[1], self.feats.dim)
            for batch in self.feats.groups(images.tolist()):
                maps = batch.features.float().permute(0, 3, 1, 2)
                out[batch.positions] = bilinear_points(maps, where[batch.positions])
            return out - self.mean
        if self.grid is not None:
            flat = self.rows.view(len(self.feats), self.grid[0] * self.grid[1], -1)
            return flat[images[:, None], where].float() - self.mean
        where = torch.minimum(where, self.counts[images][:, None] - 1)
        return self.rows[self.feats.offsets[images][:, None] + where].float() - self.mean


def sampled_correlations(s: StegoConfig, points: PointSampler, knn: torch.Tensor, n_images: int, batches: int,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The feature correlations F of the pairs the loss sees, per term, over ``batches`` batches sampled as in
    training: an image with itself, with a k-NN neighbour, with random other images."""
    out: dict[str, list[torch.Tensor]] = {t: [] for t in TERMS}
    n_points = s.feature_samples ** 2
    for _ in range(batches):
        batch = torch.randint(n_images, (s.batch_size,), generator=generator)
        neighbours = knn[batch, torch.randint(s.knn_draw, (s.batch_size,), generator=generator)]
        first, second = points.draw(batch, n_points, generator)
        feats, feats_second, feats_knn = points(batch, first), points(batch, second), points(neighbours, second)
        out["self"].append(feature_correlation(feats, feats, s.pointwise).flatten())
        out["knn"].append(feature_correlation(feats, feats_knn, s.pointwise).flatten())
        for _ in range(max(1, s.neg_samples)):
            perm = derangement(s.batch_size, generator)
            out["rand"].append(feature_correlation(feats, feats_second[perm], s.pointwise).flatten())
    return {t: torch.cat(v) for t, v in out.items()}


def calibration(cfg: Config, s: StegoConfig, train: CachedFeatures, points: PointSampler, knn: torch.Tensor) -> dict:
    """The calibrated shifts of a feature cache entry: computed once (a fixed sample, seed 0) and cached beside the
    other STEGO caches; with the repel fractions they were made for, and each term's F statistics."""
    key = {"features": cfg.hash("data", "backbone", "features"), "split": training_view(cfg, s),
           "content": train.meta.get("content", {}).get("blake3"),
           **{k: getattr(s, k) for k in ("repel_self", "repel_knn", "repel_rand", "calibration_batches", "pointwise",
                                         "feature_samples", "batch_size", "knn", "knn_draw", "neg_samples", "centre",
                                         "sampling")}}
    path = stego_cache(cfg) / "calibration" / f"{_digest(key)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    values = sampled_correlations(s, points, knn, len(train), s.calibration_batches, torch.Generator().manual_seed(0))
    repel = {"self": s.repel_self, "knn": s.repel_knn, "rand": s.repel_rand}
    shifts = calibrated_shifts(values, repel)
    record = {"key": key, "repel": repel, "shifts": shifts,
              "feature_correlation_mean": {t: float(v.mean()) for t, v in values.items()},
              "pairs": {t: int(v.numel()) for t, v in values.items()}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("STEGO shifts calibrated (repel %s): %s", repel, shifts)
    return record


def training_view(cfg: Config, s: StegoConfig) -> str:
    """What STEGO trains on: the training split, or its five crops."""
    split = cfg.data.train_split
    return five_crop_view(split, s.five_crop_ratio, s.five_crop_zoom) if s.five_crop_ratio else split


def training_features(cfg: Config, s: StegoConfig, progress: bool = True) -> CachedFeatures:
    """The training split's cached features, or its five crops (encoded on first use)."""
    if s.five_crop_ratio:
        return five_crop_features(cfg, cfg.data.train_split, s.five_crop_ratio, s.five_crop_zoom, progress)
    return load_features(cfg, cfg.data.train_split)


def stego_cache(cfg: Config) -> Path:
    """Where STEGO's calibrations and trained heads are cached: beside the feature cache."""
    return Path(cfg.features.cache_dir).parent / "stego" / cfg.data.dataset


def _digest(key: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def train_stego(cfg: Config, seed: int, train: CachedFeatures, knn: torch.Tensor, n_clusters: int,
                device: torch.device, progress: bool = True, section: StegoConfig | None = None,
                shifts: dict[str, float] | None = None) -> tuple[StegoSegmenter, History, dict]:
    """The whole loop: sample points, correspondence loss on the head, cluster loss on the detached codes. Logging
    draws from its own generator, so how often it logs never changes the training. ``section``: the params (default
    cfg.stego); ``shifts``: per term (default the section's shift_self/knn/rand)."""
    s = section or cfg.stego
    shifts = shifts or {"self": s.shift_self, "knn": s.shift_knn, "rand": s.shift_rand}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    logging_generator = torch.Generator().manual_seed(seed + 1_000_003)
    mean = feature_mean(train, s.centre)
    points = PointSampler(train, mean, s.sampling == "continuous")
    model = StegoSegmenter(train.dim, s.code_dim, n_clusters, s.dropout, mean).to(device)
    opt = torch.optim.Adam(model.head.parameters(), lr=s.lr)
    probe_opt = torch.optim.Adam(model.probe.parameters(), lr=s.probe_lr)
    weights, n_points = weights_of(s, shifts), s.feature_samples ** 2
    history, correlations = History(), {}
    wins = torch.zeros(n_clusters, dtype=torch.long)
    reseeded = 0
    model.train()
    for step in tqdm(range(s.steps), desc="train stego", disable=not progress, unit="step"):
        batch = torch.randint(len(train), (s.batch_size,), generator=generator)
        neighbours = knn[batch, torch.randint(s.knn_draw, (s.batch_size,), generator=generator)]
        first, second = points.draw(batch, n_points, generator)
        feats = points(batch, first).to(device)
        feats_second = points(batch, second).to(device)
        feats_knn = points(neighbours, second).to(device)
        # One head pass per image (one dropout mask per image, as on a whole feature map).
        codes, codes_second = model.head(torch.cat([feats, feats_second], 1)).split(n_points, 1)
        codes_knn = model.head(feats_knn)
        if s.correlation_dropout:  # STEGO computes F on the dropped-out features
            feats, feats_second, feats_knn = (model.head._drop(x) for x in (feats, feats_second, feats_knn))
        terms = stego_loss(feats, codes, feats_knn, codes_knn, feats_second, codes_second, weights,
                           s.neg_samples, s.pointwise, s.zero_clamp, generator)
        detached = torch.cat([codes, codes_second], 1).detach()
        probe_loss = model.probe.loss(detached)
        loss = terms["loss"] + probe_loss
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"STEGO loss became {loss.item()} at step {step}; lower stego.lr")
        opt.zero_grad(set_to_none=True)
        probe_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        probe_opt.step()
        wins += model.probe.wins(detached).cpu()
        if s.probe_reseed_every and (step + 1) % s.probe_reseed_every == 0:
            reseeded += model.probe.reseed(detached, wins == 0)
            wins.zero_()
        if step % s.log_every == 0 or step == s.steps - 1:
            _log_correlations(correlations, shifts, s, feats, feats_knn, feats_second, logging_generator)
            history.log({"step": step + 1, "loss": terms["loss"].item(), **{t: terms[t].item() for t in TERMS},
                         "probe": probe_loss.item()})
    summary = {k: round(sum(v) / len(v), 4) for k, v in correlations.items() if v}
    summary["probe_centroids_reseeded"] = reseeded
    return model.eval(), history.stop(), summary


@torch.no_grad()
def _log_correlations(out: dict[str, list[float]], shifts: dict[str, float], s: StegoConfig, feats, feats_knn,
                      feats_second, generator: torch.Generator) -> None:
    """What the shifts are compared with: the mean feature correlation F of each pair type, and the share of pairs
    whose F exceeds the term's shift (pairs that attract)."""
    perm = derangement(feats.shape[0], generator).to(feats.device)
    for name, other in (("self", feats), ("knn", feats_knn), ("rand", feats_second[perm])):
        fd = feature_correlation(feats, other, s.pointwise)
        out.setdefault(f"feature_correlation_{name}", []).append(fd.mean().item())
        out.setdefault(f"attract_fraction_{name}", []).append((fd > shifts[name]).float().mean().item())


@torch.no_grad()
def split_codes(model: StegoSegmenter, feats: CachedFeatures, device: torch.device, batch_size: int = 16) -> torch.Tensor:
    """Codes [patches, c] of every patch of a split (head in eval mode: no dropout)."""
    out = []
    for start in range(0, len(feats), batch_size):
        for batch in feats.groups(range(start, min(start + batch_size, len(feats)))):
            out.append(model.codes(batch.features.to(device)).reshape(-1, model.probe.centroids.shape[1]).cpu())
    return torch.cat(out)


class StegoMethod(Method):
    """One STEGO variant: its params section (``self.name``), where its shifts come from, its readout."""

    config = StegoConfig  # each variant reads its own section of this type, under its name

    def __init__(self, name: str, title: str, readout: str):
        self.name, self.title, self.readout = name, title, readout
        self.steps_key = f"{name}.steps"

    def section(self, cfg: Config) -> StegoConfig:
        return getattr(cfg, self.name)

    def report_note(self, cfg: Config) -> str | None:
        if self.name != "stego":  # one note for the three variants
            return None
        st, pub = cfg.stego, cfg.stego_published
        return (f"STEGO: trained on cached features for {st.steps} steps, weights self/k-NN/random "
                f"{st.w_self}/{st.w_knn}/{st.w_rand}; `stego` and `stego_kmeans` (one training, two readouts) with "
                f"shifts {st.shifts} (repel fractions {st.repel_self}/{st.repel_knn}/{st.repel_rand} of the sampled "
                f"pairs), `stego_published` with the published shifts {pub.shift_self}/{pub.shift_knn}/"
                f"{pub.shift_rand}; last step kept; one setting was chosen with val labels, on CamVid val: centring "
                "the features (`stego.centre`; evidence: the sweep studies/sweeps/stego_details.yaml); no setting "
                "was chosen with test labels")

    def fit(self, cfg: Config, seed: int, device: torch.device, progress: bool = True) -> Fitted:
        s = self.section(cfg)
        train = training_features(cfg, s, progress)
        knn = knn_table(pooled_features(train), s.knn)  # each image's nearest images: STEGO's positives
        mode = s.shifts
        summary: dict[str, Any] = {"shifts_mode": mode}
        if mode == "calibrated":
            record = calibration(cfg, s, train, PointSampler(train, feature_mean(train, s.centre),
                                                             s.sampling == "continuous"), knn)
            shifts = record["shifts"]
            summary["calibration"] = record
        else:
            shifts = {"self": s.shift_self, "knn": s.shift_knn, "rand": s.shift_rand}
        k = self.n_clusters(cfg)
        model, history, diagnostics = self._trained(cfg, s, seed, train, knn, k, device, shifts, progress)
        same = cfg.data.cluster_split == cfg.data.train_split and not s.five_crop_ratio
        cluster = train if same else load_features(cfg, cfg.data.cluster_split)
        codes = split_codes(model, cluster, device)
        probe_wins = model.probe.wins(codes.to(device)).cpu()
        result = kmeans(codes, k, seed=seed, iters=s.kmeans_iters, cosine=True, n_init=s.kmeans_n_init)
        model.code_centroids.copy_(result.centroids.to(device))
        model.readout = self.readout
        summary.update({"shifts": shifts, **diagnostics,
                        "probe_clusters_used": int((probe_wins > 0).sum()),
                        "kmeans_clusters_used": int(torch.bincount(result.labels, minlength=k).gt(0).sum()),
                        "codes_kmeans_inertia": result.inertia})
        facts = {"feature_dim": train.dim, "n_clusters": k, "weights_sha256": train.meta["weights_sha256"],
                 "readout": self.readout}
        return Fitted(model, facts, history, summary, f"STEGO ({mode} shifts) correspondence loss, seed {seed}")

    def _trained(self, cfg, s, seed, train, knn, k, device, shifts, progress):
        """The trained head and probe, cached by everything that decides them (so stego and stego_kmeans, which
        share a training, train once)."""
        key = {"features": cfg.hash("data", "backbone", "features"), "train_split": cfg.data.train_split,
               "content": train.meta.get("content", {}).get("blake3"),  # the very features it trains on
               "stego": {f: v for f, v in identity(s).items() if not f.startswith("kmeans_")},
               "shifts": shifts, "seed": seed, "clusters": k, "threads": torch.get_num_threads(),
               "device": str(device)}
        path = stego_cache(cfg) / "heads" / f"{_digest(key)}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            model = StegoSegmenter(train.dim, s.code_dim, k, s.dropout)
            model.load_state_dict(saved["state_dict"])
            history = History(columns=saved["history"], seconds=saved["seconds"])
            log.info("reusing the trained STEGO head %s", path)
            return model.to(device).eval(), history, saved["diagnostics"]
        model, history, diagnostics = train_stego(cfg, seed, train, knn, k, device, progress, s, shifts)
        with atomic_path(path) as tmp:
            torch.save({"key": key, "state_dict": model.state_dict(), "history": history.columns,
                        "seconds": history.seconds, "diagnostics": diagnostics}, tmp)
        return model, history, diagnostics

    def build(self, cfg: Config, facts: dict[str, Any]) -> StegoSegmenter:
        s = self.section(cfg)
        return StegoSegmenter(facts["feature_dim"], s.code_dim, facts["n_clusters"], s.dropout,
                              readout=facts["readout"])

    def predictor(self, cfg, model, facts, device, split) -> Predictor:
        return SegmenterPredictor(model)


register_method(StegoMethod("stego", "STEGO (calibrated shifts)", "probe"))
register_method(StegoMethod("stego_kmeans", "STEGO (calibrated shifts), k-means readout", "kmeans"))
register_method(StegoMethod("stego_published", "STEGO (published COCO-Stuff shifts)", "probe"))
