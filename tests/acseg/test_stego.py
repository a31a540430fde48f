"""STEGO's pieces: the k-NN table, the correspondence loss, the head and the cluster probe."""

import pytest
import torch
import torch.nn.functional as F

from acseg.stego import (ClusterProbe, CorrespondenceWeights, SegmentationHead, correspondence_loss, derangement,
                         feature_correlation, knn_table, stego_loss)


def test_knn_table_finds_the_planted_nearest_neighbour():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 16
    base = F.normalize(torch.randn(n // 2, d, generator=g), dim=-1)
    partner = torch.randperm(n // 2, generator=g)
    # Item i and item n/2 + partner^-1 ... planted pairs: twins are tiny perturbations of each other.
    twins = base[partner] + 0.01 * torch.randn(n // 2, d, generator=g)
    pooled = torch.cat([base, twins])
    table = knn_table(pooled, k=5, chunk=7)  # chunked rows must agree with the whole matrix
    expected_first = torch.cat([n // 2 + torch.argsort(partner), partner])
    assert table.shape == (n, 5)
    assert torch.equal(table[:, 0], expected_first)
    assert not (table == torch.arange(n)[:, None]).any(), "an image is never its own neighbour"
    assert torch.equal(table, knn_table(pooled, k=5, chunk=1000))


def test_knn_table_needs_enough_images():
    import pytest

    with pytest.raises(ValueError, match="k=5"):
        knn_table(torch.randn(5, 3), k=5)


def _clustered_points(g, b=4, p=60, d=32, c=8, groups=3):
    """Features in `groups` well-separated clusters, and codes that agree with them (one code axis per group)."""
    centres = torch.randn(groups, d, generator=g) * 3
    group = torch.randint(groups, (b, p), generator=g)
    feats = centres[group] + 0.3 * torch.randn(b, p, d, generator=g)
    codes = F.one_hot(group, c).float() + 0.05 * torch.randn(b, p, c, generator=g)
    return feats, codes


def test_correspondence_loss_is_lower_when_code_correlations_agree_with_feature_correlations():
    g = torch.Generator().manual_seed(0)
    feats, codes = _clustered_points(g)
    shuffled = codes[:, torch.randperm(codes.shape[1], generator=g)]  # same codes, wrong points
    for pointwise in (True, False):
        agree = correspondence_loss(feats, feats, codes, codes, shift=0.1, pointwise=pointwise)
        disagree = correspondence_loss(feats, feats, shuffled, shuffled, shift=0.1, pointwise=pointwise)
        assert agree < disagree


def test_feature_correlation_pointwise_keeps_the_global_mean_and_centres_rows():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 10, 8, generator=g), torch.randn(2, 12, 8, generator=g)
    raw, centred = feature_correlation(a, b, False), feature_correlation(a, b, True)
    assert torch.allclose(raw.mean(), centred.mean(), atol=1e-6)
    row_means = centred.mean(-1)
    assert torch.allclose(row_means, row_means.mean().expand_as(row_means), atol=1e-6)


def test_stego_loss_terms_and_weights():
    g = torch.Generator().manual_seed(2)
    feats, codes = _clustered_points(g)
    w = CorrespondenceWeights(1.0, 0.0, 0.0, 0.1, 0.1, 0.1)
    terms = stego_loss(feats, codes, feats, codes, feats, codes, w, neg_samples=2, generator=g)
    assert torch.allclose(terms["loss"], terms["self"])
    w2 = CorrespondenceWeights(0.5, 0.25, 2.0, 0.1, 0.2, 0.3)
    terms = stego_loss(feats, codes, feats, codes, feats, codes, w2, neg_samples=2, generator=g)
    assert torch.allclose(terms["loss"], 0.5 * terms["self"] + 0.25 * terms["knn"] + 2.0 * terms["rand"])


def test_derangement_has_no_fixed_point():
    g = torch.Generator().manual_seed(3)
    for n in (2, 3, 16):
        for _ in range(20):
            perm = derangement(n, g)
            assert sorted(perm.tolist()) == list(range(n)) and not (perm == torch.arange(n)).any()


def test_head_is_per_point_and_dropout_is_off_in_eval():
    head = SegmentationHead(12, 5, dropout=0.5).eval()
    x = torch.randn(2, 9, 12)
    out = head(x)
    assert out.shape == (2, 9, 5)
    assert torch.allclose(head(x[:, :3]), out[:, :3])  # a point's code depends on that point only
    assert torch.equal(head(x), out)


def test_cluster_probe_learns_separated_clusters():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 6, generator=g), dim=-1)
    group = torch.randint(3, (600,), generator=g)
    codes = centres[group] + 0.05 * torch.randn(600, 6, generator=g)
    probe = ClusterProbe(6, 3)
    opt = torch.optim.Adam(probe.parameters(), lr=5e-2)
    for _ in range(300):
        opt.zero_grad()
        probe.loss(codes).backward()
        opt.step()
    pred = probe(codes).argmax(-1)
    # each true cluster maps to one probe cluster, and different clusters to different ones
    mapping = {int(group[pred == k].mode().values) for k in pred.unique()}
    assert len(pred.unique()) == 3 and mapping == {0, 1, 2}


def test_calibrated_shifts_make_the_stated_fraction_of_pairs_repel():
    """On correlations of a known distribution (uniform on [-1, 1]), each term's shift is the quantile that makes
    exactly its stated fraction of pairs repel (F below the shift)."""
    from acseg.stego import calibrated_shifts

    g = torch.Generator().manual_seed(0)
    values = {t: torch.rand(100_000, generator=g) * 2 - 1 for t in ("self", "knn", "rand")}
    repel = {"self": 0.7, "knn": 0.5, "rand": 0.9}
    shifts = calibrated_shifts(values, repel)
    for term, fraction in repel.items():
        assert abs(shifts[term] - (2 * fraction - 1)) < 0.02  # the uniform's quantile
        assert abs((values[term] < shifts[term]).float().mean().item() - fraction) < 1e-3


def test_a_dead_probe_centroid_is_reseeded_and_wins_again():
    from acseg.stego import ClusterProbe

    probe = ClusterProbe(code_dim=4, n_clusters=3)
    codes = torch.cat([F.one_hot(torch.tensor([0] * 50 + [1] * 50), 4).float(),
                       torch.tensor([[0.0, 0.0, 1.0, 0.0]]).expand(40, 4)])  # three groups of codes
    with torch.no_grad():
        probe.centroids.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, -1.0, 0]]))  # the third: opposite
    dead = probe.wins(codes) == 0  # the third group of codes goes to the first centroid (a tie at cos 0)
    assert dead.tolist() == [False, False, True]
    assert probe.reseed(codes, dead) == 1
    assert probe.wins(codes)[2] > 0  # it now stands on a code and wins points again


def test_bilinear_points_read_patch_centres_exactly():
    from acseg.stego import bilinear_points

    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float).reshape(2, 3, 4, 5)  # [B, d, h, w]
    # the centre of patch (row 1, col 3) of a 4 x 5 grid in grid_sample's coordinates (align_corners=False)
    x, y = (3 + 0.5) / 5 * 2 - 1, (1 + 0.5) / 4 * 2 - 1
    out = bilinear_points(maps, torch.tensor([[[x, y]], [[x, y]]]))
    assert torch.allclose(out[:, 0], maps[:, :, 1, 3])


def test_five_crop_boxes_are_the_four_corners_and_the_centre():
    from acseg.stego import FIVE_CROPS, five_crop_boxes

    boxes = five_crop_boxes(10, 21, 0.5)
    assert len(boxes) == len(FIVE_CROPS) == 5
    assert boxes == [(0, 0, 5, 10), (0, 11, 5, 10), (5, 0, 5, 10), (5, 11, 5, 10), (2, 5, 5, 10)]
    for ratio in (0, 1, 1.5):
        with pytest.raises(ValueError, match="five-crop ratio"):
            five_crop_boxes(10, 21, ratio)
