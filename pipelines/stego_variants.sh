#!/usr/bin/env bash
# Why STEGO falls short of the k-means floor on CamVid (README, "STEGO on CamVid"): each variant changes one
# label-free choice of the STEGO baseline, trains and evaluates it (seed 0) through the ordinary CLI into
# runs_stego_variants/<name>/, and the rows land in reports/stego_variants.csv. Nothing here is selected with
# labels: the variants are evidence for the write-up, and the pipeline's STEGO row keeps the published recipe.
# Run from the repository root with the environment of the README, after `dvc repro` (it reuses the feature
# cache and the k-NN table); about 3 minutes per 1,000-step variant on 2 CPU cores.
set -euo pipefail
seed=0
variant() {
    local name=$1; shift
    acseg-bench baseline stego --seed $seed --quiet -s "run.runs_dir=runs_stego_variants/$name" "$@"
}
variant cityscapes_preset --preset stego_cityscapes                   # the other published weights/shifts
variant centred -s stego.centre=true                                  # DINOv2's common component removed
variant no_random_negatives -s stego.w_rand=0                         # only the self and k-NN terms
variant steps5000 -s stego.steps=5000                                 # STEGO's published number of steps
bash pipelines/collect_variants.sh runs_stego_variants reports/stego_variants.csv
