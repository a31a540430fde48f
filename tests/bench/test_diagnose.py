import pytest
import torch

from bench.diagnose import hard_modularity, majority_relabel


def test_majority_relabel_is_the_oracle():
    segments = torch.tensor([[0, 0, 1], [1, 1, 2]])
    labels = torch.tensor([[3, 3, 5], [4, 4, 11]])
    assert majority_relabel(segments, labels, 11, 11).tolist() == [[3, 3, 4], [4, 4, 0]]


def test_true_partition_has_higher_modularity():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(10)
    x = torch.eye(8)[labels] + 0.05 * torch.randn(30, 8, generator=g)
    assert hard_modularity(x, labels) > hard_modularity(x, torch.randint(0, 3, (30,), generator=g)) + 0.3


@pytest.mark.parametrize("n_classes, cluster_images", [(3, 6), (5, 1)])
def test_the_classifier_ceiling_is_100_on_perfectly_separable_regions(n_classes, cluster_images):
    """Every class has its own feature direction: the classifier fitted on the ground-truth regions of one split
    classifies those of another perfectly; also when the cluster split holds fewer regions (3, one image) than
    the dataset has classes (5): one class per region then."""
    import numpy as np

    from bench.datasets.base import DatasetSpec
    from bench.diagnose import classifier_ceiling
    from bench.features import CachedFeatures
    from bench.methods.acseg import build_model
    from tests.conftest import make_config

    cfg = make_config(**{"acseg.classifier.n_init": 3})
    spec = DatasetSpec(name="toy", title="toy", class_names=("a", "b", "c", "d", "e")[:n_classes], ignore_index=255, splits={},
                       how_to_get="")
    g = torch.Generator().manual_seed(0)
    directions = torch.eye(3, 16) * 5

    def split(n_images, seed):
        rng = np.random.default_rng(seed)
        labels = {}
        rows = []
        for i in range(n_images):
            lab = np.zeros((8, 12), np.int64)
            lab[:, 4:8], lab[:, 8:] = 1, 2
            lab = np.roll(lab, 2 * rng.integers(0, 6), axis=1)  # class boundaries on patch boundaries
            lab[0, 0] = 255
            labels[f"i{i}"] = lab
            patch = torch.from_numpy(lab[::2, ::2].copy()).clamp_max(2)  # a 4 x 6 grid, 2 x 2 pixels a patch
            rows.append(directions[patch.flatten()] + 0.1 * torch.randn(24, 16, generator=g))
        feats = CachedFeatures(torch.cat(rows).half(), torch.zeros(24 * n_images, 1), torch.tensor([[4, 6]] * n_images),
                               list(labels), {})
        return feats, labels.__getitem__

    model = build_model(cfg, 16, n_classes)
    ceiling = classifier_ceiling(cfg, model, split(cluster_images, 0), split(3, 1), spec, seed=0, device=torch.device("cpu"))
    assert ceiling == 100.0
