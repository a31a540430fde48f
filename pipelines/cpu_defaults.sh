#!/usr/bin/env bash
# Evidence for the CPU defaults in params.yaml: each variant changes one choice from the defaults, trains and
# evaluates ACSeg (seed 0) through the ordinary CLI into runs_variants/<name>/, and the results land in
# reports/cpu_defaults.csv (one row per run; steps/s and final loss from training, concepts per image).
# Run from the repository root with the environment of the README (about 6 minutes on a 2-core Intel Xeon,
# 30 on a 2-core AMD EPYC; it reuses the feature cache of `dvc repro`, keys included).
set -euo pipefail
seed=0
variant() {
    local name=$1; shift
    local sets=(-s "run.runs_dir=runs_variants/$name" "$@")
    acseg-bench train --seed $seed --quiet "${sets[@]}"
    acseg-bench evaluate --seed $seed --quiet "${sets[@]}"
}
variant steps400 -s train.steps=400
variant k5 -s acseg.prototypes=5
variant k20 -s acseg.prototypes=20
variant paper_width -s acseg.width=null -s acseg.heads=6 -s acseg.mlp_width=1024
variant soft_loss -s acseg.loss=soft_modularity
variant classifier_centred -s classifier.raw_regions=false -s classifier.n_init=1
acseg-bench features --quiet -s features.type=keys
variant keys -s features.type=keys
acseg-bench baseline kmeans --seed $seed --quiet -s features.type=keys -s run.runs_dir=runs_variants/keys
bash pipelines/collect_variants.sh runs_variants reports/cpu_defaults.csv
