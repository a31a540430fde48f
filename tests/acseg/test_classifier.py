import pytest
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


def test_low_attention_concepts_are_background():
    """The defining property: concepts that receive little of the [CLS] token's attention are background."""
    from acseg.classifier import background_concepts, concept_attention

    # one image, 4 x 4 patches, 4 concepts: concept 0 = top-left object (4 patches) holds most attention,
    # concept 1 = a second object, concepts 2 and 3 = large low-attention regions; prototype 4 wins nothing
    assignment = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [3, 3, 1, 1], [3, 3, 3, 1]]).reshape(1, 16)
    weights = torch.tensor([0.12, 0.20, 0.005, 0.01])[assignment]  # attention per patch, by its concept
    attention = (weights / weights.sum()).reshape(1, 1, 4, 4).repeat(1, 2, 1, 1)  # 2 heads
    scores = concept_attention(attention, assignment, 5)
    assert torch.allclose(scores.sum(), torch.tensor(1.0)) and scores[0, 4] == 0
    assert background_concepts(attention, assignment, 5).tolist() == [[False, False, True, True, False]]


def test_two_means_is_the_exact_one_dimensional_optimum():
    from acseg.classifier import two_means_low

    g = torch.Generator().manual_seed(0)
    scores, valid = torch.rand(200, 6, generator=g), torch.rand(200, 6, generator=g) > 0.3
    low = two_means_low(scores, valid)
    for s, v, got in zip(scores, valid, low):
        values = sorted(s[v].tolist())
        if len(values) < 2:
            assert not got.any()
            continue
        sse = [sum((x - sum(part) / len(part)) ** 2 for part in (values[:j], values[j:]) for x in part)
               for j in range(1, len(values))]
        threshold = values[min(range(len(sse)), key=sse.__getitem__)]
        assert torch.equal(got, v & (s <= threshold))
    assert not two_means_low(torch.full((1, 3), 0.2), torch.ones(1, 3, dtype=torch.bool)).any()  # no split of equals


def test_background_concepts_take_the_background_class():
    from acseg.classifier import background_concepts

    torch.manual_seed(0)
    model = ACSeg(ConceptGenerator(8, n_prototypes=4, depth=1, heads=2, mlp_width=16), torch.zeros(8), n_classes=3,
                  background=True)
    assert model.class_centroids.shape == (2, 8)  # K - 1 classes from k-means, the last id is background
    model.class_centroids.copy_(torch.nn.functional.normalize(torch.randn(2, 8), dim=-1))
    feats, attention = torch.randn(2, 4, 5, 8), torch.rand(2, 3, 4, 5).softmax(-1)
    seg = model(feats, (8, 10), attention)
    is_background = background_concepts(attention, seg.patch_concepts.flatten(1), 4)
    assert is_background.any()
    assert (seg.concept_classes[is_background] == 2).all() and (seg.concept_classes[~is_background] < 2).all()
    with pytest.raises(ValueError, match="needs the \\[CLS\\] attention"):
        model(feats, (8, 10))


def test_concept_boxes_bound_each_concepts_patches():
    from acseg.classifier import concept_boxes

    a = torch.zeros(2, 4, 5, dtype=torch.long)
    a[0, 1:3, 2:5] = 2  # a 2x3 block
    a[0, 3, 0] = 1  # one patch
    a[1, 0, 4] = 3  # image 2: two separate patches of one concept -> the box spans both
    a[1, 3, 1] = 3
    boxes, present = concept_boxes(a, 4)
    assert present.tolist() == [[True, True, True, False], [True, False, False, True]]
    assert boxes[0].tolist() == [[0, 0, 4, 5], [3, 0, 4, 1], [1, 2, 3, 5], [0, 0, 0, 0]]
    assert boxes[1, 3].tolist() == [0, 1, 4, 5]


def test_crop_boxes_cut_exactly_the_box_and_resize_it():
    from acseg.classifier import crop_boxes

    patch = 2
    image = torch.zeros(1, 3, 8, 10)
    image[0, :, 2:6, 4:10] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]  # patches rows 1..3, columns 2..5
    image[0, :, 0:2, 0:2] = 1.0
    boxes = torch.tensor([[[1, 2, 3, 5], [0, 0, 1, 1], [0, 0, 4, 5]]])
    crops = crop_boxes(image, boxes, patch, size=6)
    assert crops.shape == (1, 3, 3, 6, 6)
    assert torch.allclose(crops[0, 0], torch.tensor([0.2, 0.5, 0.9])[:, None, None].expand(3, 6, 6))  # box = block
    assert torch.allclose(crops[0, 1], torch.ones(3, 6, 6))  # a one-patch box, upsampled
    whole = crop_boxes(image, boxes[:, 2:], patch, size=10)[0, 0]  # the whole image at a size: a plain resize
    assert torch.allclose(whole, torch.nn.functional.interpolate(image, size=(10, 10), mode="bilinear")[0], atol=1e-5)


def test_region_embeddings_from_elsewhere_replace_the_region_means():
    torch.manual_seed(0)
    model = ACSeg(ConceptGenerator(8, n_prototypes=4, depth=1, heads=2, mlp_width=16), torch.zeros(8), n_classes=2)
    model.class_centroids.copy_(torch.eye(8)[:2])
    feats = torch.randn(1, 3, 3, 8)
    seg = model(feats, (3, 3))
    towards = torch.zeros(1, 4, 8)
    towards[..., 1] = 1.0  # every concept's crop points at class 1
    crops = model(feats, (3, 3), region_embeddings=towards)
    used = seg.concept_classes >= 0
    assert (crops.concept_classes[used] == 1).all() and (crops.concept_classes[~used] == -1).all()
    assert torch.equal(crops.concepts, seg.concepts)  # only the classes change, never the segments


def test_crop_boxes_equal_cutting_out_and_resizing():
    from acseg.classifier import crop_boxes

    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 12, 15, generator=g)
    boxes = torch.tensor([[[1, 2, 3, 5], [0, 0, 4, 5]], [[2, 1, 4, 2], [3, 4, 4, 5]]])
    crops = crop_boxes(image, boxes, 3, size=7)
    for i in range(2):
        for j in range(2):
            t, l, bo, r = (boxes[i, j] * 3).tolist()
            cut = torch.nn.functional.interpolate(image[i : i + 1, :, t:bo, l:r], size=(7, 7), mode="bilinear")
            assert torch.allclose(crops[i, j], cut[0], atol=1e-5)
