"""`acseg-bench predict`: a folder of images -> label PNGs and colour overlays from a trained ACSeg model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from acseg.features import ViTFeatures
from bench.backbones import load_backbone
from bench.config import Config
from bench.crops import crop_embeddings
from bench.data import DatasetError, load_image, resize_image
from bench.features import input_size, resolve_device
from bench.figures import colorize
from bench.runs import load_fitted, run_dir

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def predict_folder(cfg: Config, seed: int, images: Path, out: Path, progress: bool = True) -> int:
    from PIL import Image


    paths = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(images).is_dir() else []
    if not paths:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {images}")
    device = resolve_device(cfg.run.device)
    model, facts = load_fitted(cfg, "acseg", seed, device)
    vit, checksum = load_backbone(cfg.backbone)
    if checksum != facts["weights_sha256"]:
        raise DatasetError(f"the model in {run_dir(cfg, 'acseg', seed)} was trained on backbone weights "
                           f"{facts['weights_sha256'][:16]}, but the params load {checksum[:16]}")
    extractor = ViTFeatures(vit, cfg.features.type).to(device)
    classifier = cfg.acseg.classifier  # what the model's classifier was fitted on (DVC keeps the two in step)
    metrics_path = run_dir(cfg, "acseg", seed) / "metrics.json"
    mapping = None
    if metrics_path.is_file():  # the cluster -> class matching of this model's evaluation, if it is this model's
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("model_sha256") == facts["model"]["sha256"]:
            mapping = np.array(metrics["mapping"])
        else:
            log.warning("%s does not evaluate the model beside it: predicting clusters, not classes", metrics_path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for path in tqdm(paths, desc="predict", disable=not progress, unit="image"):
            rgb = load_image(path)
            x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None].to(device) / 255
            x = resize_image(x[0], input_size(rgb.shape[:2], cfg, extractor.patch_size))[None]
            extracted = extractor(x)
            regions = None
            if classifier.regions == "crops":  # the classifier was fitted on re-encoded crops: re-encode these
                regions = crop_embeddings(model, extractor, extracted["features"], x, extractor.patch_size,
                                          classifier.crop_size, cfg.features.batch_size)
            classes = model(extracted["features"], rgb.shape[:2], extracted["cls_attention"],
                            regions).classes[0].cpu().numpy()
            if mapping is not None:
                classes = mapping[classes]
            Image.fromarray(classes.astype(np.uint8)).save(out / f"{path.stem}.png")
            overlay = (0.5 * rgb + 0.5 * colorize(classes)).astype(np.uint8)
            Image.fromarray(overlay).save(out / f"{path.stem}_overlay.png")
    return len(paths)
