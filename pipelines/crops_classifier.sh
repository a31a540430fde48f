#!/usr/bin/env bash
# The concept classifier on re-encoded crops (docs/method.md step 5a, classifier.regions=crops) against the
# default region means, 3 seeds, at the ablations' budget (ablations.train_steps): rows in
# reports/crops_classifier.csv, runs in runs_crops/. Not one of the `dvc repro` sweeps because every concept
# costs a backbone pass (about 4,000 crops at 224x224 per seed, train and val): minutes per seed on 2 CPU
# cores against 20 seconds for a region-mean point. Two workers of one thread each, as the `dvc repro` sweeps
# run (ablations.jobs=2), so the region_mean rows are the sweeps' default point again (ACSeg's training is
# sensitive to the thread count, see the README). Run from the repository root with the environment of the
# README, after `dvc repro` (it reuses the feature cache).
set -euo pipefail
acseg-bench ablate --classifier region_mean,crops --seeds 0,1,2 --jobs 2 --quiet \
    --runs-dir runs_crops --out reports/crops_classifier.csv "$@"
