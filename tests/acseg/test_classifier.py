import torch

from acseg.classifier import classify_concepts, fit_concept_classifier, region_embeddings
from acseg.concept_generator import ConceptGenerator
from acseg.model import ACSeg


def test_region_embeddings_are_region_means():
    feats = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])
    assign = torch.tensor([[0, 0, 2]])
    emb, counts = region_embeddings(feats, assign, 3)
    assert counts.tolist() == [[2, 0, 1]]
    assert torch.allclose(emb[0], torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))


def test_classifier_groups_regions_by_direction():
    g = torch.Generator().manual_seed(0)
    dirs = torch.eye(4)[:2]
    regions = torch.cat([dirs[0] + 0.05 * torch.randn(10, 4, generator=g), dirs[1] + 0.05 * torch.randn(10, 4, generator=g)])
    fit = fit_concept_classifier(regions, 2, seed=0)
    classes = classify_concepts(regions, fit.centroids)
    assert len(set(classes[:10].tolist())) == 1 and len(set(classes[10:].tolist())) == 1
    assert classes[0] != classes[10]


def test_every_pixel_takes_the_class_of_its_concept():
    torch.manual_seed(0)
    model = ACSeg(ConceptGenerator(8, n_prototypes=4, depth=1, heads=2, mlp_width=16), torch.zeros(8), n_classes=3)
    model.class_centroids.copy_(torch.nn.functional.normalize(torch.randn(3, 8), dim=-1))
    feats = torch.randn(2, 4, 5, 8)
    seg = model(feats, (12, 15))
    assert seg.classes.shape == (2, 12, 15) and seg.concepts.shape == (2, 12, 15)
    for b in range(2):
        used = seg.patch_concepts[b].unique()
        assert set(seg.concepts[b].unique().tolist()) <= set(used.tolist())  # unused concepts never win a pixel
        assert torch.equal(seg.classes[b], seg.concept_classes[b][seg.concepts[b]])
        assert seg.n_concepts[b] == len(used)
