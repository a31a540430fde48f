"""ACSeg: Adaptive Conceptualization for Unsupervised Semantic Segmentation (Li et al., CVPR 2023).

The method as a library: tensors in, tensors out; no files, no tracking. One module per idea, in the
order of the paper (see docs/methods/acseg.md):

- :mod:`acseg.features`           frozen ViT -> patch features (tokens or keys) and [CLS] attention
- :mod:`acseg.concept_generator`  the Adaptive Concept Generator (learnable prototypes -> per-image concepts)
- :mod:`acseg.assignment`         pixel-to-concept cosine assignment, hard and soft
- :mod:`acseg.losses`             the modularity loss and its documented variants
- :mod:`acseg.classifier`         concept regions -> dataset-wide classes (region embeddings + k-means)
- :mod:`acseg.kmeans`             a seeded, vectorised k-means used by the classifier and the k-means baseline
- :mod:`acseg.metrics`            confusion matrix, Hungarian matching, mIoU / accuracy
"""
